"""Analytics against plain Python: funnels from recorded journey state, active users, retention, segment sizes.

Every figure is compared with a naive computation over the same rows (sets of users, loops over days and
messages) written here without Polars, on hand-built databases, on generated events (hypothesis) and on the
state a real pipeline run leaves.
"""

import json
import random
import shutil
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert, select, update

from engine.analytics import active_users, retention, segment_trends
from engine.db import connect, insert_new
from engine.definitions import load_definitions
from engine.funnels import DeliveryFunnel, JourneyFunnel, delivery_funnel, journey_funnel
from engine.pipeline import RunContext, advance_journeys, behaviour_at, ingest, recompute_segments
from engine.render import TemplateStore
from engine.sample.generate import generate
from engine.settings import REPO_ROOT, EngineSettings
from models.feedback import DeliveryFact
from models.journeys import JourneyDefinition
from models.tables import JourneyInstance, JourneyTransition, OutboxMessage, SegmentSize
from tests.journey_harness import T0, Runner, journey

D = timedelta(days=1)
EVENT_SCHEMA = {
    "user_id": pl.String,
    "event": pl.String,
    "ts": pl.Datetime("us", "UTC"),
    "value": pl.Float64,
    "properties": pl.String,
}
FEEDBACK_EVENTS = {"email_delivered", "email_open", "email_click", "email_bounce", "email_unsubscribe"}
Event = tuple[str, str, datetime, dict[str, str] | None]  # user, event, ts, properties


def event_frame(rows: list[Event]) -> pl.LazyFrame:
    data = [(user, name, ts, None, json.dumps(props) if props else None) for user, name, ts, props in rows]
    return pl.LazyFrame(data, schema=EVENT_SCHEMA, orient="row")


def rounded(rows: list[tuple]) -> list[tuple]:
    """Rows with their shares to 12 decimals: Polars divides by a broadcast count as a multiplication by its
    reciprocal, which may differ from Python's quotient in the last bit."""
    return [tuple(round(value, 12) if isinstance(value, float) else value for value in row) for row in rows]


def complete_days_before(as_of: datetime) -> date:
    """The last day whose following midnight is not after as_of, found by walking back from as_of's date."""
    day = as_of.date()
    while datetime.combine(day + D, time(), UTC) > as_of:
        day -= D
    return day


def activity(rows: list[Event], event: str | None) -> set[tuple[str, date]]:
    return {
        (user, ts.date()) for user, name, ts, _ in rows if (name == event if event else name not in FEEDBACK_EVENTS)
    }


def naive_active_users(rows: list[Event], as_of: datetime, days: int, event: str | None) -> list[tuple]:
    active, last = activity(rows, event), complete_days_before(as_of)
    expected = []
    for back in range(days - 1, -1, -1):
        day = last - back * D
        dau = len({user for user, seen in active if seen == day})
        wau = len({user for user, seen in active if day - 6 * D <= seen <= day})
        mau = len({user for user, seen in active if day - 27 * D <= seen <= day})
        expected.append((day, dau, wau, mau, dau / mau if mau else None))
    return expected


def naive_retention(rows: list[Event], as_of: datetime, days: int, event: str | None) -> list[tuple]:
    last = complete_days_before(as_of)
    active = {(user, day) for user, day in activity(rows, event) if day <= last}
    first_seen: dict[str, date] = {}
    for user, day in active:
        first_seen[user] = min(day, first_seen.get(user, day))
    expected = []
    for cohort in sorted(set(first_seen.values())):
        if cohort <= last - days * D:
            continue
        members = [user for user, first in first_seen.items() if first == cohort]
        shares = [
            sum((user, cohort + n * D) in active for user in members) / len(members) if cohort + n * D <= last else None
            for n in (1, 7, 30)
        ]
        expected.append((cohort, len(members), *shares))
    return expected


# --- active users and retention ------------------------------------------------------------------------------

BASE = datetime(2026, 8, 1, tzinfo=UTC)
EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d", "e", "f"]),
        st.sampled_from(["app_open", "view_item", "purchase", "email_open", "email_delivered"]),
        st.integers(0, 50 * 24 * 60 - 1).map(lambda minutes: BASE + timedelta(minutes=minutes)),
        st.none(),
    ),
    max_size=80,
)
AS_OF = st.integers(0, 55 * 24).map(lambda hours: BASE + timedelta(hours=hours))  # midnight one time in 24


@settings(max_examples=60, deadline=None)
@given(rows=EVENTS, as_of=AS_OF, days=st.integers(1, 12), event=st.sampled_from([None, "app_open"]))
def test_active_users_are_the_distinct_users_of_each_window(rows: list[Event], as_of: datetime, days: int, event):
    result = active_users(event_frame(rows), as_of=as_of, days=days, event=event)
    assert rounded(result.days.rows()) == rounded(naive_active_users(rows, as_of, days, event))


@settings(max_examples=60, deadline=None)
@given(rows=EVENTS, as_of=AS_OF, days=st.integers(1, 50), event=st.sampled_from([None, "app_open"]))
def test_retention_is_the_share_of_each_first_day_cohort_back_on_day_n(rows: list[Event], as_of: datetime, days, event):
    result = retention(event_frame(rows), as_of=as_of, days=days, event=event)
    assert rounded(result.cohorts.rows()) == rounded(naive_retention(rows, as_of, days, event))


def test_the_day_of_as_of_and_provider_feedback_are_not_activity():
    as_of = datetime(2026, 9, 3, 6, tzinfo=UTC)
    rows: list[Event] = [
        ("a", "app_open", datetime(2026, 9, 2, 23, 59, tzinfo=UTC), None),
        ("b", "app_open", datetime(2026, 9, 3, 1, tzinfo=UTC), None),  # as_of's day has not ended
        ("c", "email_open", datetime(2026, 9, 2, 12, tzinfo=UTC), None),  # engagement with our mail only
        ("d", "view_item", datetime(2026, 8, 27, 12, tzinfo=UTC), None),  # in the week ending 09-02
    ]
    result = active_users(event_frame(rows), as_of=as_of, days=2)
    assert result.days.rows() == [(date(2026, 9, 1), 0, 1, 1, 0.0), (date(2026, 9, 2), 1, 2, 2, 0.5)]
    assert active_users(event_frame(rows), as_of=as_of, days=1, event="email_open").days.row(0)[1] == 1
    markdown = result.markdown()
    assert "| day | DAU | WAU | MAU | DAU/MAU |" in markdown and "| 2026-09-02 | 1 | 2 | 2 | 50.0% |" in markdown


def test_a_cohort_is_measured_only_on_days_that_have_ended():
    rows: list[Event] = [(f"u{i}", "app_open", datetime(2026, 9, 1, 9, tzinfo=UTC), None) for i in range(1200)]
    rows += [(f"u{i}", "app_open", datetime(2026, 9, 2, 9, tzinfo=UTC), None) for i in range(300)]
    rows += [(f"u{i}", "app_open", datetime(2026, 9, 8, 9, tzinfo=UTC), None) for i in range(0, 1200, 2)]
    result = retention(event_frame(rows), as_of=datetime(2026, 9, 9, tzinfo=UTC), days=30)
    assert result.cohorts.rows() == [(date(2026, 9, 1), 1200, 0.25, 0.5, None)]
    assert "| 2026-09-01 | 1,200 | 25.0% | 50.0% | n/a |" in result.markdown()


# --- journey funnel -----------------------------------------------------------------------------------------

FUNNEL = """
name: reminder
goal: {event: purchase, within: 3d}
entry: {segment: s}
start: wait
nodes:
  wait: {delay: 1d, next: check}
  check:
    branch:
      - when: {performed: {event: view_item, within: {since: entry}}}
        next: remind
    otherwise: done
  remind:
    send:
      channel: email
      variants: [{variant: control, template: plain}, {variant: saved, template: saved}]
    next: later
  later: {delay: 1d, next: push}
  push: {send: {channel: push, template: nudge}, next: done}
  done: {exit: completed}
"""
KINDS = {"wait": "delay", "check": "branch", "remind": "send", "later": "delay", "push": "send", "done": "exit"}


def walked(url: str, *, seed: int, users: int = 80, runs: int = 7) -> tuple[Runner, list[datetime]]:
    """Users entering a journey every run (after their exit), with random views and purchases; state saved."""
    rng = random.Random(seed)
    names = [f"u{i:03d}" for i in range(users)]
    events: list = []
    for user in names:
        for _ in range(rng.randrange(4)):
            events.append((user, rng.choice(["view_item", "purchase"]), T0 + timedelta(hours=rng.randrange(8 * 24))))
    runner = Runner(journey(FUNNEL), users=pl.LazyFrame({"user_id": names}))
    moments = [T0 + day * D for day in range(runs)]
    for as_of in moments:
        runner.run(as_of, entered=rng.sample(names, users // 2), events=events)
    with connect(url).begin() as conn:
        insert_new(conn, JourneyInstance.__table__, runner.state.with_columns(run_id=pl.lit("r")).to_dicts())
        insert_new(conn, JourneyTransition.__table__, runner.transitions.with_columns(run_id=pl.lit("r")).to_dicts())
    return runner, moments


def naive_journey_funnel(
    transitions: list[dict[str, Any]], instances: list[dict[str, Any]], as_of: datetime
) -> list[tuple]:
    seen = [row for row in transitions if row["at"] <= as_of]
    goal_exits = {row["instance_id"] for row in instances if row["exit_reason"] == "goal"}
    finished = {row["instance_id"] for row in seen if row["to_node"] == "(exit)" and row["instance_id"] in goal_exits}
    reached = {"(entered)": {row["instance_id"] for row in seen if row["from_node"] is None}}
    for node in KINDS:
        reached[node] = {row["instance_id"] for row in seen if row["to_node"] == node}
    reached["(goal)"] = finished
    entered = len(reached["(entered)"])
    kinds = {"(entered)": "entry", **KINDS, "(goal)": "goal"}
    return [
        (
            step,
            kinds[step],
            len(ids),
            len(ids) / entered if entered else None,
            len(ids & finished),
            len(ids & finished) / len(ids) if ids else None,
        )
        for step, ids in reached.items()
    ]


def test_the_journey_funnel_counts_distinct_instances_reaching_each_node_by_as_of(database_url: str):
    runner, moments = walked(database_url, seed=3)
    transitions, instances = runner.transitions.to_dicts(), runner.state.to_dicts()
    assert any(row["exit_reason"] == "goal" for row in instances), "the walk must convert someone"
    for as_of in (moments[0], moments[3] + timedelta(hours=1), moments[-1]):
        with connect(database_url).connect() as conn:
            funnel = journey_funnel(conn, runner.definition, as_of=as_of)
        assert rounded(funnel.steps.rows()) == rounded(naive_journey_funnel(transitions, instances, as_of)), as_of
    with connect(database_url).connect() as conn:
        assert journey_funnel(conn, runner.definition, as_of=moments[0] - D).steps.get_column("instances").sum() == 0


def test_a_journey_without_goal_has_no_goal_step_and_unknown_goal_counts(database_url: str):
    runner, moments = walked(database_url, seed=4, runs=3)
    no_goal = journey(FUNNEL.replace("goal: {event: purchase, within: 3d}\n", ""))
    with connect(database_url).connect() as conn:
        funnel = journey_funnel(conn, no_goal, as_of=moments[-1])
    expected = naive_journey_funnel(runner.transitions.to_dicts(), runner.state.to_dicts(), moments[-1])[:-1]
    assert rounded(funnel.steps.rows()) == rounded([(*row[:4], None, None) for row in expected])
    assert "| goals |" not in funnel.markdown() and "The journey has no goal." in funnel.markdown()


def test_nodes_of_earlier_versions_follow_the_current_ones(database_url: str):
    at = T0 + timedelta(hours=1)
    rows = [
        {"instance_id": "i1", "step": 0, "from_node": None, "to_node": "wait"},
        {"instance_id": "i1", "step": 1, "from_node": "wait", "to_node": "old_node"},
        {"instance_id": "i1", "step": 2, "from_node": "old_node", "to_node": "(exit)"},
    ]
    with connect(database_url).begin() as conn:
        conn.execute(
            insert(JourneyTransition.__table__),
            [row | {"journey": "reminder", "user_id": "u", "at": at, "run_id": "r", "reason": "x"} for row in rows],
        )
        funnel = journey_funnel(conn, journey(FUNNEL), as_of=at)
    assert funnel.steps.select("step", "kind", "instances").rows()[-2:] == [
        ("old_node", "earlier version", 1),
        ("(goal)", "goal", 0),
    ]


# --- delivery funnel ----------------------------------------------------------------------------------------

SHOP = """
name: shop
goal: {event: purchase, within: 2d, where: {sku: a}}
entry: {segment: s}
start: remind
nodes:
  remind:
    send: {channel: email, variants: [{variant: control, template: plain}, {variant: saved, template: saved}]}
    next: push
  push: {send: {channel: push, template: nudge}, next: done}
  done: {exit: completed}
"""
NEWS = """
name: news
entry: {segment: s}
start: letter
nodes:
  letter: {send: {channel: email, template: letter}, next: done}
  done: {exit: completed}
"""
KINDS_OF_MESSAGE = [  # journey, node, variant, channel
    ("shop", "remind", "control", "email"),
    ("shop", "remind", "saved", "email"),
    ("shop", "push", None, "push"),
    ("news", "letter", None, "email"),
    ("legacy", "old", None, "email"),  # a journey no longer defined: its conversions are unknown
]


@dataclass
class Deliveries:
    messages: list[dict[str, Any]]
    facts: list[dict[str, Any]]
    events: list[Event]


def deliveries(seed: int) -> Deliveries:
    rng = random.Random(seed)
    messages, facts, events = [], [], []
    for number in range(400):
        journey_name, node, variant, channel = rng.choice(KINDS_OF_MESSAGE)
        user, planned_at = f"u{rng.randrange(60):02d}", T0 + rng.randrange(7) * D
        status = rng.choice(["planned", "accepted", "accepted", "accepted", "failed", "skipped", "sending"])
        key = f"k{number:04d}"
        messages.append(
            {"send_key": key, "run_id": "r", "as_of": planned_at, "journey": journey_name, "journey_version": "v",
             "node": node, "instance_id": f"i{number}", "user_id": user, "channel": channel, "template": "t",
             "variant": variant, "status": status, "attempts": 1, "transactional": False}
        )  # fmt: skip
        for kind in rng.sample(["received", "opened", "opened", "clicked", "bounced"], rng.randrange(4)):
            when = planned_at + timedelta(hours=rng.randrange(100))
            facts.append({"sg_event_id": f"e{len(facts)}", "send_key": key, "user_id": user, "kind": kind, "ts": when})
    for _ in range(250):
        name = rng.choice(["purchase", "purchase", "view_item"])
        when = T0 + timedelta(hours=rng.randrange(-24, 10 * 24))
        events.append((f"u{rng.randrange(60):02d}", name, when, {"sku": rng.choice("ab")}))
    return Deliveries(messages, facts, events)


def naive_delivery_funnel(world: Deliveries, as_of: datetime) -> list[tuple]:
    goals = {"shop": ("purchase", {"sku": "a"}, timedelta(days=2))}
    counts: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for message in world.messages:
        if message["as_of"] > as_of:
            continue
        group, sent = counts[tuple(message[key] for key in ("journey", "node", "variant", "channel"))], False
        group["planned"] += 1
        if message["status"] == "accepted":
            group["sent"] += 1
            sent = True
        for stage, kind in (("delivered", "received"), ("opened", "opened"), ("clicked", "clicked")):
            group[stage] += any(
                fact["send_key"] == message["send_key"] and fact["kind"] == kind and fact["ts"] <= as_of
                for fact in world.facts
            )
        if sent and message["journey"] in goals:
            event, where, within = goals[message["journey"]]
            group["converted"] += any(
                user == message["user_id"]
                and name == event
                and props == where
                and message["as_of"] < ts <= message["as_of"] + within
                and ts <= as_of
                for user, name, ts, props in world.events
            )
    expected = []
    for group in sorted(counts, key=lambda g: (g[0], g[1], g[2] is not None, g[2] or "", g[3])):
        got = counts[group]
        for stage in ("planned", "sent", "delivered", "opened", "clicked", "converted"):
            known = not (
                (stage in ("delivered", "opened", "clicked") and group[3] != "email")
                or (stage == "converted" and group[0] != "shop")
            )
            value = got[stage] if known else None
            of_planned = value / got["planned"] if value is not None else None
            of_sent = value / got["sent"] if value is not None and stage != "planned" and got["sent"] else None
            expected.append((*group, stage, value, of_planned, of_sent))
    return expected


@pytest.mark.parametrize("seed", [1, 2])
def test_the_delivery_funnel_counts_messages_through_each_stage(database_url: str, seed: int):
    world = deliveries(seed)
    with connect(database_url).begin() as conn:
        insert_new(conn, OutboxMessage.__table__, world.messages)
        insert_new(conn, DeliveryFact.__table__, world.facts)
    definitions = [journey(SHOP), journey(NEWS)]
    for as_of in (T0 + 3 * D + timedelta(hours=5), T0 + 20 * D):
        with connect(database_url).connect() as conn:
            funnel = delivery_funnel(conn, event_frame(world.events), definitions, as_of=as_of)
        assert rounded(funnel.stages.rows()) == rounded(naive_delivery_funnel(world, as_of)), as_of
    assert funnel.stages.filter(pl.col("stage") == "converted").get_column("messages").sum() > 0


def test_a_sent_message_converts_on_a_goal_event_after_it_and_within_the_window(database_url: str):
    purchases = {  # user -> when they bought sku a (u5: sku b, not the goal)
        "u1": T0,  # at the planning instant: not after it
        "u2": T0 + 2 * D,  # the last instant of the window
        "u3": T0 + 2 * D + timedelta(seconds=1),  # too late
        "u4": T0 + D,  # converts, but the message was skipped: not sent, not converted
        "u5": T0 + D,
        "u6": T0 + D,  # converts, seen by a report as of T0 + D or later only
    }
    messages = [
        {"send_key": f"k{user}", "run_id": "r", "as_of": T0, "journey": "shop", "journey_version": "v",
         "node": "remind", "instance_id": f"i{user}", "user_id": user, "channel": "email", "template": "t",
         "variant": "control", "status": "skipped" if user == "u4" else "accepted", "attempts": 0,
         "transactional": False}
        for user in purchases
    ]  # fmt: skip
    with connect(database_url).begin() as conn:
        insert_new(conn, OutboxMessage.__table__, messages)
        rows: list[Event] = [
            (user, "purchase", ts, {"sku": "b" if user == "u5" else "a"}) for user, ts in purchases.items()
        ]
        funnel = delivery_funnel(conn, event_frame(rows), [journey(SHOP)], as_of=T0 + D - timedelta(seconds=1))
        assert funnel.stages.filter(pl.col("stage") == "converted").get_column("messages").to_list() == [0]
        funnel = delivery_funnel(conn, event_frame(rows), [journey(SHOP)], as_of=T0 + 5 * D)
    counts = dict(funnel.stages.select("stage", "messages").iter_rows())
    assert counts == {"planned": 6, "sent": 5, "delivered": 0, "opened": 0, "clicked": 0, "converted": 2}


def test_the_funnels_render_as_markdown_with_thousands_separators():
    as_of = datetime(2026, 10, 1, 6, tzinfo=UTC)
    steps = pl.DataFrame(
        [("(entered)", "entry", 12_000, 1.0, 1_500, 0.125), ("wait", "delay", 6_000, 0.5, 750, 0.125)],
        schema=["step", "kind", "instances", "share_of_entered", "goals", "goal_rate"],
        orient="row",
    )
    markdown = JourneyFunnel(journey(FUNNEL), as_of, steps).markdown().splitlines()
    assert markdown[0] == "### Journey funnel: reminder"
    assert "| (entered) | entry | 12,000 | 100.0% | 1,500 | 12.5% |" in markdown
    stages = pl.DataFrame(
        [("shop", "push", None, "push", "planned", 2_000, 1.0, None),
         ("shop", "push", None, "push", "sent", 1_000, 0.5, 1.0),
         *(("shop", "push", None, "push", stage, None, None, None) for stage in ("delivered", "opened", "clicked")),
         ("shop", "push", None, "push", "converted", 100, 0.05, 0.1)],
        schema=["journey", "node", "variant", "channel", "stage", "messages", "of_planned", "of_sent"],
        orient="row",
    )  # fmt: skip
    rendered = DeliveryFunnel(as_of, stages).markdown()
    assert "| shop | push |  | push | 2,000 | 1,000 (50.0%) | n/a | n/a | n/a | 100 (10.0%) |" in rendered


# --- segment sizes ------------------------------------------------------------------------------------------


def test_segment_trends_hold_each_run_with_its_change_since_the_one_before(database_url: str):
    rng = random.Random(9)
    rows = []
    for day in range(1, 9):
        for segment in ("loyalists", "cart_abandoners"):
            if segment == "cart_abandoners" and day == 5:
                continue  # a run without this segment: the next change is from the run before
            version = "v2" if segment == "loyalists" and day >= 4 else "v1"
            rows.append(
                {"segment": segment, "as_of": datetime(2026, 10, day, 6, tzinfo=UTC), "run_id": f"r{day}",
                 "definition_version": version, "size": rng.randrange(500, 5_000), "entered": rng.randrange(100),
                 "exited": rng.randrange(100)}
            )  # fmt: skip
    with connect(database_url).begin() as conn:
        conn.execute(insert(SegmentSize.__table__), rows)
        trends = segment_trends(conn, start=date(2026, 10, 3), end=date(2026, 10, 6))
    expected = []
    for row in sorted(rows, key=lambda row: (row["as_of"], row["segment"])):
        if not date(2026, 10, 3) <= row["as_of"].date() <= date(2026, 10, 6):
            continue
        earlier = [other for other in rows if other["segment"] == row["segment"] and other["as_of"] < row["as_of"]]
        previous = max(earlier, key=lambda other: other["as_of"])
        expected.append(
            (row["segment"], row["as_of"], row["size"], row["entered"], row["exited"], row["size"] - previous["size"],
             row["definition_version"] != previous["definition_version"])
        )  # fmt: skip
    assert trends.runs.rows() == expected
    assert [row[-1] for row in expected].count(True) == 1
    size = next(row for row in rows if row["segment"] == "loyalists" and row["as_of"].day == 4)["size"]
    assert f"| {size:,} (" in trends.markdown() and " *" in trends.markdown()


# --- a real pipeline run ------------------------------------------------------------------------------------

START = date(2026, 9, 1)
RUNS = [datetime.combine(START + timedelta(days=10 + i), time(6), UTC) for i in range(3)]
LATER = datetime.combine(START + timedelta(days=20), time(6), UTC)  # a week of events after the last run


@dataclass
class Pipeline:
    settings: EngineSettings
    journeys: list[JourneyDefinition]

    def rows(self, table: type) -> list[dict[str, Any]]:
        with connect(self.settings.database).connect() as conn:
            return [dict(row) for row in conn.execute(select(table.__table__)).mappings()]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """Three daily runs of the shipped definitions over generated data, every planned email then accepted, and the
    events of the week after ingested (no run sees them; the delivery funnel as of `LATER` does)."""
    base = tmp_path_factory.mktemp("analytics")
    generate(base / "snapshot", users=800, days=20, start=START, seed=11)
    shutil.copytree(REPO_ROOT / "definitions", base / "definitions")
    settings = EngineSettings(home=base / "home", snapshot_dir=base / "snapshot", definitions_dir=base / "definitions")
    definitions = load_definitions(settings.definitions_dir, TemplateStore(settings.templates_dir))
    database = connect(settings.database)
    for number, as_of in enumerate(RUNS):
        ctx = RunContext(run_id=f"run-{number}", as_of=as_of, dry_run=False, settings=settings)
        ingest(ctx)
        advance_journeys(ctx, definitions, database, recompute_segments(ctx, definitions, database))
    ingest(RunContext(run_id="later", as_of=LATER, dry_run=False, settings=settings))
    outbox = OutboxMessage.__table__  # type: ignore[attr-defined]
    with database.begin() as conn:
        conn.execute(
            update(outbox).where(outbox.c.status == "planned", outbox.c.channel == "email").values(status="accepted")
        )
    return Pipeline(settings, list(definitions.journeys.values()))


def test_a_real_run_gives_the_journey_and_delivery_funnels_of_its_tables(pipeline: Pipeline):
    as_of = RUNS[-1]
    cart = next(definition for definition in pipeline.journeys if definition.name == "abandoned_cart")
    database = connect(pipeline.settings.database)
    with database.connect() as conn:
        funnel = journey_funnel(conn, cart, as_of=as_of)
    transitions = [row for row in pipeline.rows(JourneyTransition) if row["journey"] == "abandoned_cart"]
    instances = [row for row in pipeline.rows(JourneyInstance) if row["journey"] == "abandoned_cart"]
    entered = len({row["instance_id"] for row in transitions if row["from_node"] is None})
    assert entered > 0 and funnel.steps.row(0)[:4] == ("(entered)", "entry", entered, 1.0)
    goals = {row["instance_id"] for row in instances if row["exit_reason"] == "goal"}
    assert funnel.steps.row(-1)[2:5:2] == (len(goals), len(goals)) and goals
    for step, _, count, _, converted, _ in funnel.steps.rows()[1:-1]:
        reached = {row["instance_id"] for row in transitions if row["to_node"] == step}
        assert (count, converted) == (len(reached), len(reached & goals)), step

    events = behaviour_at(pipeline.settings, LATER).events
    with database.connect() as conn:
        stages = delivery_funnel(conn, events, pipeline.journeys, as_of=LATER).stages
    messages = [row for row in pipeline.rows(OutboxMessage) if row["journey"] == "abandoned_cart"]
    assert any(row["status"] == "accepted" for row in messages)
    purchases = [
        (row["user_id"], row["ts"])
        for row in events.filter(pl.col("event") == "purchase").collect().iter_rows(named=True)
    ]
    for (node, variant, channel), group in stages.filter(pl.col("journey") == "abandoned_cart").group_by(
        "node", "variant", "channel"
    ):
        mine = [row for row in messages if (row["node"], row["variant"], row["channel"]) == (node, variant, channel)]
        sent = [row for row in mine if row["status"] == "accepted"]
        converted = sum(
            any(user == row["user_id"] and row["as_of"] < ts <= row["as_of"] + 7 * D for user, ts in purchases)
            for row in sent
        )
        by_stage = dict(group.select("stage", "messages").iter_rows())
        assert (by_stage["planned"], by_stage["sent"], by_stage["converted"]) == (len(mine), len(sent), converted)
    assert stages.filter(pl.col("stage") == "converted").get_column("messages").sum() > 0


def test_a_real_run_gives_active_users_retention_and_segment_sizes_of_its_events(pipeline: Pipeline):
    as_of = RUNS[-1]
    events = behaviour_at(pipeline.settings, as_of).events
    rows: list[Event] = [
        (user, name, ts, None) for user, name, ts in events.select("user_id", "event", "ts").collect().rows()
    ]
    measured = active_users(events, as_of=as_of, days=10).days.rows()
    assert rounded(measured) == rounded(naive_active_users(rows, as_of, 10, None))
    cohorts = retention(events, as_of=as_of, days=12, event="app_open").cohorts.rows()
    assert rounded(cohorts) == rounded(naive_retention(rows, as_of, 12, "app_open"))
    with connect(pipeline.settings.database).connect() as conn:
        trends = segment_trends(conn, start=RUNS[0].date(), end=RUNS[-1].date())
    sizes = pipeline.rows(SegmentSize)
    assert trends.runs.height == len(sizes) > 0
    for segment, at, size, _, _, change, _ in trends.runs.rows():
        before = [row["size"] for row in sizes if row["segment"] == segment and row["as_of"] == at - D]
        assert change == (size - before[0] if before else None)
