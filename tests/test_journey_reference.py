"""The journey engine against a naive reference: random event logs, random small journeys, same paths.

Hypothesis draws three users, an event log over ~12 days at whole hours (so events often fall exactly on a
run, an entry or a deadline), a journey built from every node type the reference reads (segment or event
entry with a re-entry policy, duration delays, branches on event conditions, wait-for an event with a timeout,
splits, sends, exits, an optional goal and holdout), and a sequence of runs, daily at 06:00 with some days
missed and some runs at 18:00. The engine (`run_journey` through `tests/journey_harness.Runner`) and
`tests/journey_reference.py` must agree, per user, on every transition (from, to, at), on each instance's final
node and exit reason, and on every send (channel, template, run).
"""

import itertools
from datetime import timedelta

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.journeys import JourneyDefinition
from tests.journey_harness import T0, Runner
from tests.journey_reference import Event, Reference

H = timedelta(hours=1)
D = timedelta(days=1)
USERS = ("u1", "u2", "u3")
EVENTS = ("view", "cart", "buy")
MAX_NODES = 9

events = st.lists(
    st.tuples(st.sampled_from(USERS), st.sampled_from(EVENTS), st.integers(-24, 10 * 24).map(lambda h: T0 + h * H)),
    min_size=4,
    max_size=40,
)
conditions = st.one_of(
    st.builds(lambda e: {"performed": {"event": e, "within": {"since": "entry"}}}, st.sampled_from(EVENTS)),
    st.builds(
        lambda e, n: {"performed": {"event": e, "at_least": n, "within": {"since": "entry"}}},
        st.sampled_from(EVENTS),
        st.integers(1, 2),
    ),
    st.builds(
        lambda e, d: {"performed": {"event": e, "within": {"last": d}}},
        st.sampled_from(EVENTS),
        st.sampled_from(["1d", "2d", "30h"]),
    ),
    st.builds(
        lambda e: {"not_performed": {"event": e, "within": {"last": "2d"}}},
        st.sampled_from(EVENTS),
    ),
)


@st.composite
def journeys(draw: st.DrawFn) -> JourneyDefinition:
    nodes: dict[str, dict] = {}
    ids = itertools.count()

    def build(depth: int) -> str:
        node_id = f"n{next(ids)}"
        nodes[node_id] = {}  # reserve the id before its children take theirs
        kinds = ["delay", "branch", "wait_for", "split", "send", "send", "exit"]
        kind = "exit" if depth >= 4 or len(nodes) >= MAX_NODES else draw(st.sampled_from(kinds))
        match kind:
            case "exit":
                node = {"exit": draw(st.sampled_from(["done", "lost", "won"]))}
            case "delay":
                node = {"delay": draw(st.sampled_from(["12h", "1d", "2d"])), "next": build(depth + 1)}
            case "send":
                spec = {"channel": draw(st.sampled_from(["email", "push"])), "template": draw(st.sampled_from("ab"))}
                node = {"send": spec, "next": build(depth + 1)}
            case "branch":
                cases = [{"when": draw(conditions), "next": build(depth + 1)} for _ in range(draw(st.integers(1, 2)))]
                node = {"branch": cases, "otherwise": build(depth + 1)}
            case "wait_for":
                node = {
                    "wait_for": {"event": draw(st.sampled_from(EVENTS))},
                    "timeout": draw(st.sampled_from(["1d", "36h", "2d"])),
                    "matched": build(depth + 1),
                    "timed_out": build(depth + 1),
                }
            case _:
                arms = [
                    {"weight": draw(st.integers(1, 5)), "next": build(depth + 1)}
                    for _ in range(draw(st.integers(2, 3)))
                ]
                node = {"split": arms}
        nodes[node_id] = node
        return node_id

    start = build(0)
    entry = draw(
        st.one_of(
            st.just({"segment": "s"}),
            st.builds(lambda e, d: {"event": e, "lookback": d}, st.sampled_from(EVENTS), st.sampled_from(["1d", "2d"])),
        )
    )
    entry["reentry"] = draw(st.sampled_from(["after_exit", "never", {"every": "3d"}, {"times": 2}]))
    definition: dict = {"name": "prop", "entry": entry, "start": start, "nodes": nodes}
    if draw(st.booleans()):
        definition["goal"] = {"event": draw(st.sampled_from(EVENTS)), "within": draw(st.sampled_from(["2d", "5d"]))}
    definition["holdout"] = draw(st.sampled_from([0, 0, 40]))
    return JourneyDefinition.model_validate(definition)


runs = st.lists(
    st.tuples(st.integers(0, 9), st.sampled_from([0, 0, 0, 12]), st.frozensets(st.sampled_from(USERS))),
    min_size=2,
    max_size=7,
    unique_by=lambda run: run[0],
).map(lambda drawn: sorted(drawn, key=lambda run: run[0]))


def engine_trace(definition: JourneyDefinition, log: list[Event], schedule: list) -> tuple[dict, dict, list]:
    runner = Runner(definition, users=pl.LazyFrame({"user_id": list(USERS)}))
    for day, hours, entered in schedule:
        runner.run(T0 + day * D + hours * H, entered=sorted(entered), events=log)
    paths: dict[str, list] = {}
    for user, from_node, to_node, at in (
        runner.transitions.sort("at", "step").select("user_id", "from_node", "to_node", "at").iter_rows()
    ):
        paths.setdefault(user, []).append((from_node, to_node, at))
    exits: dict[str, list] = {}
    for user, node, reason in (
        runner.state.sort("user_id", "entered_at").select("user_id", "node", "exit_reason").iter_rows()
    ):
        exits.setdefault(user, []).append((node, reason))
    return paths, exits, sorted(runner.sends)


def reference_trace(definition: JourneyDefinition, log: list[Event], schedule: list) -> tuple[dict, dict, list]:
    reference = Reference(definition)
    for day, hours, entered in schedule:
        reference.run(T0 + day * D + hours * H, entered=sorted(entered), events=log)
    return reference.transitions, reference.exits(), sorted(reference.sends)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(journeys(), events, runs)
def test_the_engine_walks_every_user_down_the_reference_path(definition, log, schedule):
    expected_paths, expected_exits, expected_sends = reference_trace(definition, log, schedule)
    paths, exits, sends = engine_trace(definition, log, schedule)
    assert paths == expected_paths
    assert exits == expected_exits
    assert sends == expected_sends
