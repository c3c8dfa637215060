"""The journey engine against a naive reference: random worlds, random small journeys, same paths.

Hypothesis draws a world: a start moment near a change of UTC offset (New York and London in spring and
autumn, Lord Howe's half-hour shift), three users with attributes (a time zone, possibly missing or unknown; a plan; a
score; a renewal date typed as a date or a datetime), an event log over ~12 days at whole hours (so events often
fall exactly on a run, an entry or a deadline) whose events may carry a `cart_id` and a `channel`, and a sequence
of runs, daily at 06:00 UTC with some days missed and some runs at other hours, each with the users entering the
entry segment and the members of every other segment. Then a journey built from everything the reference reads
(segment, event, keyed event or broadcast entry with a re-entry policy and maybe active dates; delays by a
duration, until a local time or until a date attribute; branches and exit criteria on event, attribute and
segment conditions; wait-for an event, filtered or of the entry's key, or a segment; splits; sends; exits; a
goal; holdout). The engine (`run_journey` through `tests/journey_harness.Runner`) and `tests/journey_reference.py`
must agree, per subject (user and entry key), on every transition (from, to, at), on each instance's final node
and exit reason, on every send (user, channel, template, run), and after every run on where each active instance
waits and until when. One property draws from everything; the others start every journey with what it would
rarely reach (a wait matching the entry key, a segment wait, a delay on the user's clock) so each example tests
it. The clock, finally, is compared directly around each offset change, which journeys reach only by chance.
"""

import itertools
from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.journey_clock import next_wall_time
from models.journeys import JourneyDefinition
from tests.journey_harness import Runner
from tests.journey_reference import Event, Reference, next_local_time

H = timedelta(hours=1)
QUARTER = timedelta(minutes=15)
D = timedelta(days=1)
USERS = ("u1", "u2", "u3")
EVENTS = ("view", "cart", "buy")
SEGMENTS = ("vip", "optout", "fans")
MAX_NODES = 9
ZONES = (None, "UTC", "Mars/Base", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata")
WALLS = ("01:30", "02:15", "09:00", "01:45", "00:00", "23:45")  # skipped or shown twice on some days, somewhere

properties = st.builds(
    lambda cart, channel: {name: value for name, value in (("cart_id", cart), ("channel", channel)) if value},
    st.sampled_from(["c1", "c1", "c2", None]),
    st.sampled_from(["app", "web", None]),
)
simple_conditions = st.one_of(
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
        lambda e: {"performed": {"event": e, "where": {"channel": "app"}, "within": {"since": "entry"}}},
        st.sampled_from(EVENTS),
    ),
    st.builds(lambda e: {"not_performed": {"event": e, "within": {"last": "2d"}}}, st.sampled_from(EVENTS)),
    st.sampled_from(
        [
            {"attribute": {"name": "plan", "equals": "gold"}},
            {"attribute": {"name": "plan", "in": ["gold", "free"]}},
            {"attribute": {"name": "plan", "not_equals": "gold"}},
            {"attribute": {"name": "plan", "exists": False}},
            {"attribute": {"name": "score", "gte": 5}},
            {"attribute": {"name": "score", "lt": 3}},
            {"segment": "vip"},
            {"not": {"segment": "optout"}},
        ]
    ),
)
conditions = st.one_of(
    simple_conditions,
    st.builds(lambda a, b: {"all": [a, b]}, simple_conditions, simple_conditions),
    st.builds(lambda a, b: {"any": [a, b]}, simple_conditions, simple_conditions),
)


DAILY_BASES = (
    datetime(2026, 3, 5, 6, tzinfo=UTC),  # New York springs forward on 8 March (02:00 -> 03:00)
    datetime(2026, 10, 23, 6, tzinfo=UTC),  # London falls back on 25 October, New York on 1 November
)
CHANGES = {  # a day and a half before a zone changes its UTC offset (the zone users mostly live in then)
    datetime(2026, 3, 6, 18, tzinfo=UTC): "America/New_York",  # 07:00 UTC on 8 March: 02:00 -> 03:00
    datetime(2026, 3, 27, 12, tzinfo=UTC): "Europe/London",  # 01:00 UTC on 29 March: 01:00 -> 02:00
    datetime(2026, 4, 3, 3, tzinfo=UTC): "Australia/Lord_Howe",  # 15:00 UTC on 4 April: 02:00 -> 01:30
    datetime(2026, 10, 2, 3, tzinfo=UTC): "Australia/Lord_Howe",  # 15:30 UTC on 3 October: 02:00 -> 02:30
    datetime(2026, 10, 23, 12, tzinfo=UTC): "Europe/London",  # 01:00 UTC on 25 October: 02:00 -> 01:00
    datetime(2026, 10, 30, 18, tzinfo=UTC): "America/New_York",  # 06:00 UTC on 1 November: 02:00 -> 01:00
}
DURATIONS = st.sampled_from(["12h", "1d", "2d"])
LOCAL_TIMES = st.builds(lambda wall: {"until_local_time": wall}, st.sampled_from(WALLS))
DATES = st.builds(
    lambda offset: {"until_attribute": "renews_at", "offset": offset}, st.sampled_from(["-3d", "-1d", "0d", "12h"])
)
ALL_NODES = ("delay", "delay", "branch", "wait_for", "split", "send", "send", "exit")


def moment(base: datetime, hours: int) -> str:
    return (base + hours * H).isoformat()


@st.composite
def journeys(
    draw: st.DrawFn,
    base: datetime,
    *,
    entries: tuple[str, ...],
    delays: st.SearchStrategy,
    node_kinds: tuple[str, ...] = ALL_NODES,
    key_waits: bool = False,
    waits: tuple[str, ...] = ("event", "segment"),
    start: str | None = None,
) -> JourneyDefinition:
    """A journey of `entries` kinds (segment, event, keyed, broadcast), delays drawn from `delays`, nodes of
    `node_kinds` (the first of kind `start` when given), waits for `waits` (events or segments); with
    `key_waits`, event waits and the goal of keyed journeys match the key more often."""
    definition: dict[str, Any] = {"name": "prop"}
    window = draw(st.one_of(st.none(), st.tuples(st.integers(0, 120), st.integers(1, 120))))
    if window is not None:
        opens, length = window
        if draw(st.booleans()):
            definition["starts_at"] = moment(base, opens)
        if draw(st.booleans()):
            definition["ends_at"] = moment(base, opens + length)
    kind = draw(st.sampled_from(entries))
    match kind:
        case "segment":
            entry: dict[str, Any] = {"segment": "s"}
        case "broadcast":
            low = window[0] if "starts_at" in definition else 0  # the broadcast is within the active dates
            high = window[0] + window[1] - 1 if "ends_at" in definition else 200
            entry = {"broadcast": "fans", "at": moment(base, draw(st.integers(low, high)))}
        case _:
            entry = {"event": draw(st.sampled_from(EVENTS)), "lookback": draw(st.sampled_from(["1d", "2d", "3d"]))}
            if draw(st.booleans()):
                entry["where"] = {"channel": "app"}
            if kind == "keyed":
                entry["key"] = "cart_id"
    entry["reentry"] = draw(st.sampled_from(["after_exit", "never", {"every": "3d"}, {"times": 2}]))
    keyed = kind == "keyed"

    def event_match() -> dict[str, Any]:
        match: dict[str, Any] = {"event": draw(st.sampled_from(EVENTS))}
        if draw(st.booleans()):
            match["where"] = {"channel": draw(st.sampled_from(["app", "web"]))}
        if keyed and draw(st.sampled_from([True, key_waits, False])):
            match["match_key"] = True
        return match

    nodes: dict[str, dict] = {}
    ids = itertools.count()

    def build(depth: int) -> str:
        node_id = f"n{next(ids)}"
        nodes[node_id] = {}  # reserve the id before its children take theirs
        kind = "exit" if depth >= 4 or len(nodes) >= MAX_NODES else draw(st.sampled_from(node_kinds))
        kind = start if start is not None and depth == 0 else kind
        match kind:
            case "exit":
                node: dict[str, Any] = {"exit": draw(st.sampled_from(["done", "lost", "won"]))}
            case "delay":
                node = {"delay": draw(delays), "next": build(depth + 1)}
            case "send":
                spec = {"channel": draw(st.sampled_from(["email", "push"])), "template": draw(st.sampled_from("ab"))}
                node = {"send": spec, "next": build(depth + 1)}
            case "branch":
                cases = [{"when": draw(conditions), "next": build(depth + 1)} for _ in range(draw(st.integers(1, 2)))]
                node = {"branch": cases, "otherwise": build(depth + 1)}
            case "wait_for":
                by_event = draw(st.sampled_from(waits)) == "event"
                awaited = event_match() if by_event else {"segment": draw(st.sampled_from(SEGMENTS[:2]))}
                node = {
                    "wait_for": awaited,
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

    definition |= {"entry": entry, "start": build(0), "nodes": nodes}
    if draw(st.booleans()):
        definition["goal"] = event_match() | {"within": draw(st.sampled_from(["2d", "5d"]))}
    criteria = draw(st.one_of(st.just([]), st.lists(conditions, min_size=1, max_size=2)))
    definition["exit_when"] = [{"when": rule, "reason": f"criterion{number}"} for number, rule in enumerate(criteria)]
    definition["holdout"] = draw(st.sampled_from([0, 0, 40]))
    return JourneyDefinition.model_validate(definition)


def daily(base: datetime) -> st.SearchStrategy[list[datetime]]:
    """Runs on 3 to 7 of 10 days, at 06:00 UTC mostly, sometimes 18:00 or 01:00 the next day."""
    return st.lists(
        st.tuples(st.integers(0, 9), st.sampled_from([0, 0, 0, 12, 19])),
        min_size=3,
        max_size=7,
        unique_by=lambda r: r[0],
    ).map(lambda drawn: sorted(base + day * D + hours * H for day, hours in drawn))


def hourly(base: datetime) -> st.SearchStrategy[list[datetime]]:
    """Up to 10 runs at any whole hours over three days."""
    return st.lists(st.integers(0, 3 * 24), min_size=4, max_size=10, unique=True).map(
        lambda drawn: sorted(base + hours * H for hours in drawn)
    )


@st.composite
def worlds(draw: st.DrawFn, *, bases: Iterable[datetime], schedule=daily, **journey) -> tuple:
    """Users with attributes, an event log, runs with their segment members, and a journey (`journeys` args)."""
    base = draw(st.sampled_from(sorted(bases)))
    zones = (CHANGES.get(base, "America/New_York"), *ZONES)  # the zone about to change first: drawn most
    dated = draw(st.booleans())  # renews_at typed as a date (its midnight UTC) rather than a datetime
    renewal = st.integers(-48, 12 * 24).map(lambda h: (base + h * H).date() if dated else base + h * H)
    users = [
        {
            "user_id": user,
            "timezone": draw(st.sampled_from(zones)),
            "plan": draw(st.sampled_from(["gold", "free", None])),
            "score": draw(st.one_of(st.none(), st.integers(0, 9))),
            "renews_at": draw(st.one_of(st.none(), renewal)),
        }
        for user in USERS
    ]
    log = draw(
        st.lists(
            st.tuples(
                st.sampled_from(USERS),
                st.sampled_from(EVENTS),
                st.integers(-24, 10 * 24).map(lambda h: base + h * H),
                properties,
            ),
            min_size=8,
            max_size=50,
        )
    )
    members = st.tuples(*[st.booleans()] * len(USERS)).map(  # each user in or out evenly, not mostly empty sets
        lambda inside: frozenset(user for user, held in zip(USERS, inside, strict=True) if held)
    )
    runs = [
        (
            as_of,
            draw(st.frozensets(st.sampled_from(USERS), min_size=1)),
            draw(st.fixed_dictionaries({name: members for name in SEGMENTS})),
        )
        for as_of in draw(schedule(base))
    ]
    return users, log, runs, draw(journeys(base, **journey))


def users_frame(users: list[dict[str, Any]]) -> pl.LazyFrame:
    dated = any(isinstance(user["renews_at"], datetime) for user in users)
    schema = {
        "user_id": pl.String,
        "timezone": pl.String,
        "plan": pl.String,
        "score": pl.Int64,
        "renews_at": pl.Datetime("us", "UTC") if dated else pl.Date,
    }
    return pl.LazyFrame([tuple(user[name] for name in schema) for user in users], schema=schema, orient="row")


def engine_trace(definition: JourneyDefinition, users: list[dict], log: list[Event], runs: list) -> tuple:
    runner = Runner(definition, users=users_frame(users))
    waiting = []
    for as_of, entered, memberships in runs:
        members = {name: sorted(inside) for name, inside in memberships.items()}
        runner.run(as_of, entered=sorted(entered), events=log, memberships=members)
        active = runner.state.filter(pl.col("status") == "active")
        waiting.append(sorted(active.select("user_id", "entry_key", "node", "due_at").iter_rows(), key=str))
    subject = dict(runner.state.select("instance_id", pl.struct("user_id", "entry_key")).iter_rows())
    paths: dict[tuple, list] = {}
    for instance, from_node, to_node, at in (
        runner.transitions.sort("at", "step").select("instance_id", "from_node", "to_node", "at").iter_rows()
    ):
        paths.setdefault(tuple(subject[instance].values()), []).append((from_node, to_node, at))
    exits: dict[tuple, list] = {}
    for user, key, node, reason in (
        runner.state.sort("entered_at").select("user_id", "entry_key", "node", "exit_reason").iter_rows()
    ):
        exits.setdefault((user, key), []).append((node, reason))
    return paths, exits, sorted(runner.sends), waiting


def reference_trace(definition: JourneyDefinition, users: list[dict], log: list[Event], runs: list) -> tuple:
    reference = Reference(definition, users={user["user_id"]: user for user in users})
    waiting = []
    for as_of, entered, memberships in runs:
        reference.run(as_of, entered=sorted(entered), events=log, memberships=memberships)
        waiting.append(sorted(reference.waiting(), key=str))
    return reference.transitions, reference.exits(), sorted(reference.sends), waiting


def agree(world: tuple) -> None:
    users, log, runs, definition = world
    expected_paths, expected_exits, expected_sends, expected_waiting = reference_trace(definition, users, log, runs)
    paths, exits, sends, waiting = engine_trace(definition, users, log, runs)
    assert paths == expected_paths
    assert exits == expected_exits
    assert sends == expected_sends
    assert waiting == expected_waiting


SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@SETTINGS
@given(
    worlds(
        bases=DAILY_BASES,
        entries=("segment", "event", "keyed", "broadcast"),
        delays=st.one_of(DURATIONS, LOCAL_TIMES, DATES),
    )
)
def test_the_engine_walks_every_subject_down_the_reference_path(world):
    agree(world)


@SETTINGS
@given(
    worlds(bases=DAILY_BASES, entries=("keyed",), delays=DURATIONS, key_waits=True, waits=("event",), start="wait_for")
)
def test_keyed_entries_wait_for_and_convert_on_their_own_key(world):
    agree(world)


@SETTINGS
@given(
    worlds(
        bases=DAILY_BASES,
        entries=("segment", "broadcast", "event"),
        delays=DURATIONS,
        waits=("segment", "segment", "event"),
        start="wait_for",
    )
)
def test_waits_for_segments_and_events_end_by_the_deadline_run(world):
    agree(world)


@settings(SETTINGS, max_examples=20)  # the slowest: many runs, each computing local times
@given(
    worlds(
        bases=CHANGES,
        schedule=hourly,
        entries=("segment",),
        delays=st.one_of(LOCAL_TIMES, LOCAL_TIMES, DATES),
        start="delay",
        node_kinds=("delay", "delay", "delay", "delay", "send", "branch", "wait_for", "exit"),
    )
)
def test_timed_delays_end_on_the_users_clock_and_dates_across_offset_changes(world):
    agree(world)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("after", "zone", "wall", "expected"),
    [
        (utc(2026, 9, 10, 6), "America/New_York", time(9), utc(2026, 9, 10, 13)),  # 02:00 EDT: today
        (utc(2026, 9, 10, 6), "Asia/Kolkata", time(9), utc(2026, 9, 11, 3, 30)),  # 11:30 IST: tomorrow
        (utc(2026, 9, 10, 9), None, time(9), utc(2026, 9, 11, 9)),  # at 09:00 sharp: the next one
        (utc(2026, 9, 10, 6), "Mars/Base", time(9), utc(2026, 9, 10, 9)),  # unknown: UTC
        (utc(2026, 3, 8, 5), "America/New_York", time(2, 15), utc(2026, 3, 8, 7)),  # skipped: the end of the skip
        (utc(2026, 11, 1, 4), "America/New_York", time(1, 30), utc(2026, 11, 1, 5, 30)),  # twice: the first
        (utc(2026, 11, 1, 6), "America/New_York", time(1, 30), utc(2026, 11, 2, 6, 30)),  # then once a day
        (utc(2026, 10, 3, 15), "Australia/Lord_Howe", time(2, 15), utc(2026, 10, 3, 15, 30)),  # a half-hour skip
    ],
)
def test_the_reference_clock_reads_hand_worked_cases(after: datetime, zone: str | None, wall: time, expected):
    assert next_local_time(after, zone, wall) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(CHANGES)),
    st.integers(0, 3 * 24 * 4).map(lambda quarters: quarters * QUARTER),
    st.sampled_from(ZONES),
    st.sampled_from(WALLS),
)
def test_the_engine_clock_agrees_with_the_reference_clock_around_offset_changes(base, since, zone, wall):
    """Directly, for any quarter hour of the three days around each change (the journeys above reach few)."""
    after, wall_time = base + since, time.fromisoformat(wall)
    assert next_wall_time(after, zone or "UTC", wall_time) == next_local_time(after, zone, wall_time)
