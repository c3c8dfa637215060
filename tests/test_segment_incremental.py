"""Advancing the feature state day by day gives exactly the memberships of a full recompute at every as_of.

Hypothesis draws what `tests/test_segment_reference.py` draws (users, an event log with late arrivals, message
deliveries, two segments over every kind of rule and window) plus a sequence of runs: mostly a day apart at the
same time of day, as daily runs are (so sliding windows subtract recorded intervals), sometimes a few hours or
days apart (so they read the leaving rows raw), with the users' attributes sometimes edited between two runs (so
windows that start at an attribute move). At each run `compute_memberships_with_state`, which keeps its state in
a folder between runs, must equal `compute_memberships` over all the data, and after the first run it must have
advanced rather than recomputed.
"""

import hashlib
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.behaviour import DELIVERY_SCHEMA, Behaviour
from engine.feature_state import FeatureStateStore
from engine.rollups import rollup_events
from engine.rules import leaves
from engine.segments import compute_memberships, compute_memberships_with_state
from models.segments import SegmentDefinition
from tests.segment_reference import Delivery, Event
from tests.test_segment_reference import (
    BASE,
    EVENTS,
    SPAN,
    USER_SCHEMA,
    closed,
    compact,
    comparisons,
    count_bounds,
    deliveries,
    events,
    rules,
    users,
    wheres,
)

EVENT_SCHEMA = {
    "user_id": pl.String,
    "event": pl.String,
    "ts": pl.Datetime("us", "UTC"),
    "value": pl.Float64,
    "properties": pl.String,
    "load_date": pl.Date,
}


def whole_days(rule: Any) -> Any:
    """A third of the `last` windows made whole days, so daily runs subtract recorded intervals."""
    if isinstance(rule, list):
        return [whole_days(item) for item in rule]
    if not isinstance(rule, dict):
        return rule
    out = {key: whole_days(value) for key, value in rule.items()}
    last = out.get("last")
    if isinstance(last, str) and last.endswith("m") and int(last[:-1]) % 3 == 0:
        out["last"] = f"{int(last[:-1]) % 4 + 1}d"
    return out


definitions = rules(()).flatmap(
    lambda first: rules(("first",)).map(
        lambda second: {
            name: SegmentDefinition.model_validate({"name": name, "rule": whole_days(rule)})
            for name, rule in (("first", first), ("second", second))
        }
    )
)


sliding = st.builds(lambda days, c: compact({"last": f"{days}d", "closed": c}), st.integers(1, 3), closed)
sliding_leaves = st.one_of(
    st.builds(
        lambda event, where, within, bounds: {
            "performed": compact({"event": event, "where": where, "within": within}) | bounds
        },
        st.sampled_from(EVENTS),
        wheres,
        sliding,
        count_bounds,
    ),
    st.builds(
        lambda event, fn, where, within, compare: {
            "aggregate": compact({"event": event, "fn": fn, "where": where, "within": within}) | compare
        },
        st.sampled_from(EVENTS),
        st.sampled_from(["sum", "avg", "min", "max"]),
        wheres,
        sliding,
        comparisons,
    ),
)
sliding_definitions = st.lists(sliding_leaves, min_size=1, max_size=4).map(
    lambda items: {"only": SegmentDefinition.model_validate({"name": "only", "rule": {"any": items}})}
)


def event_frame(rows: list[Event]) -> pl.DataFrame:
    return pl.DataFrame(
        [(e.user_id, e.event, e.ts, e.value, e.properties, e.load_date) for e in rows],
        schema=EVENT_SCHEMA,
        orient="row",
    )


def behaviour_at(frame: pl.DataFrame, delivery_rows: list[Delivery], as_of: datetime) -> Behaviour:
    """What a run at as_of sees: arrivals up to its date, events before it, rollups of whole days before it."""
    arrived = frame.lazy().filter(pl.col("load_date") <= as_of.date())
    return Behaviour(
        as_of=as_of,
        events=arrived.filter(pl.col("ts") < as_of),
        rollups=rollup_events(arrived).filter(pl.col("day") < as_of.date()),
        deliveries=pl.LazyFrame(
            [(d.user_id, d.journey, d.template, d.channel, d.kind, d.ts) for d in delivery_rows],
            schema=DELIVERY_SCHEMA,
            orient="row",
        ),
    )


def arrivals_of(frame: pl.DataFrame) -> dict[str, str]:
    """A fingerprint per arrival partition, from its rows (what file sizes and times are to a real store)."""
    out = {}
    for (day,), part in frame.partition_by("load_date", as_dict=True).items():
        digest = hashlib.sha256(part.sort(pl.all()).write_csv().encode()).hexdigest()
        out[day.isoformat()] = digest
    return out


def users_frame(rows: tuple[dict[str, Any], ...]) -> pl.LazyFrame:
    return pl.LazyFrame(list(rows), schema=USER_SCHEMA)


steps = st.lists(
    st.one_of(
        st.just(timedelta(days=1)),
        st.just(timedelta(days=1)),
        st.just(timedelta(0)),
        st.integers(1, 4 * 24 * 60).map(lambda m: timedelta(minutes=m)),
    ),
    min_size=1,
    max_size=6,
)
edits = st.lists(st.none() | users, min_size=6, max_size=6)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    definitions=definitions,
    user_rows=users,
    event_rows=events,
    delivery_rows=deliveries,
    start=st.integers(0, SPAN - 4 * 24 * 60),
    steps=steps,
    edited=edits,
)
def test_advancing_the_state_equals_a_full_recompute_at_every_run(
    definitions, user_rows, event_rows, delivery_rows, start, steps, edited
):
    frame = event_frame(event_rows)
    arrivals = arrivals_of(frame)
    as_of = BASE + timedelta(minutes=start)
    with tempfile.TemporaryDirectory() as folder:
        store = FeatureStateStore(Path(folder))
        for run, step in enumerate([timedelta(0), *steps]):
            as_of += step
            if run and edited[run - 1] is not None:
                user_rows = edited[run - 1]
            behaviour = behaviour_at(frame, delivery_rows, as_of)
            expected = compute_memberships(definitions, users_frame(user_rows), behaviour)
            got, how = compute_memberships_with_state(
                definitions, users_frame(user_rows), behaviour, store, arrivals=arrivals
            )
            assert {k: v.to_list() for k, v in got.items()} == {k: v.to_list() for k, v in expected.items()}
            assert how.mode == ("full" if run == 0 else "incremental"), how


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    definitions=sliding_definitions,
    user_rows=users,
    event_rows=events,
    start=st.integers(0, SPAN - 8 * 24 * 60),
    days=st.integers(2, 8),
)
def test_daily_runs_over_sliding_windows_equal_a_full_recompute(definitions, user_rows, event_rows, start, days):
    """Runs a day apart: from the fourth on, the day leaving a window comes from the recorded intervals (unless
    the window excludes its start, which moves it a microsecond off the runs' instants)."""
    specs = [getattr(leaf, "performed", None) or leaf.aggregate for leaf in leaves(definitions["only"].rule)]
    aligned = all(spec.within.closed in ("left", "both") for spec in specs)
    frame = event_frame(event_rows)
    arrivals = arrivals_of(frame)
    with tempfile.TemporaryDirectory() as folder:
        store = FeatureStateStore(Path(folder))
        for day in range(days):
            behaviour = behaviour_at(frame, [], BASE + timedelta(minutes=start, days=day))
            expected = compute_memberships(definitions, users_frame(user_rows), behaviour)
            got, how = compute_memberships_with_state(
                definitions, users_frame(user_rows), behaviour, store, arrivals=arrivals
            )
            assert got["only"].to_list() == expected["only"].to_list()
            if day >= 4 and aligned:
                assert how.leaving_raw == 0 and how.leaving_from_buckets > 0, how


BUYERS_7D = {
    "buyers": SegmentDefinition.model_validate(
        {"name": "buyers", "rule": {"performed": {"event": "buy", "within": {"last": "7d"}, "at_least": 2}}}
    )
}


def daily(day: int) -> datetime:
    return datetime(2026, 3, day, 6, tzinfo=UTC)


def buys(*days: tuple[str, int, int]) -> pl.DataFrame:
    """(user, day of March at 10:00, arrival day of March)."""
    return event_frame(
        [Event(user, "buy", datetime(2026, 3, d, 10, tzinfo=UTC), 1.0, None, date(2026, 3, a)) for user, d, a in days]
    )


def run(store: FeatureStateStore, frame: pl.DataFrame, as_of: datetime, arrivals: dict[str, str] | None = None):
    users = pl.LazyFrame({"user_id": ["a", "b"]})
    behaviour = behaviour_at(frame, [], as_of)
    got, how = compute_memberships_with_state(
        BUYERS_7D, users, behaviour, store, arrivals=arrivals if arrivals is not None else arrivals_of(frame)
    )
    assert got["buyers"].to_list() == compute_memberships(BUYERS_7D, users, behaviour)["buyers"].to_list()
    return got["buyers"].to_list(), how


def test_daily_runs_subtract_the_recorded_day_leaving_the_window(tmp_path: Path):
    frame = buys(("a", 1, 1), ("a", 2, 2), ("b", 3, 3), ("b", 9, 9))
    store = FeatureStateStore(tmp_path)
    assert run(store, frame, daily(2))[1].mode == "full"
    for day in range(3, 12):
        members, how = run(store, frame, daily(day))
        assert how.mode == "incremental"
    # by March 11 the chain started on March 2 has recorded every day leaving the 7-day window
    assert how.leaving_from_buckets == 1 and how.leaving_raw == 0
    assert members == []


def test_a_changed_past_partition_makes_the_next_run_recompute_in_full(tmp_path: Path):
    frame = buys(("a", 1, 1), ("a", 2, 2))
    store = FeatureStateStore(tmp_path)
    run(store, frame, daily(3))
    corrected = buys(("a", 1, 1), ("a", 2, 2), ("b", 2, 2), ("b", 2, 2))  # March 2's partition was replaced
    members, how = run(store, corrected, daily(4))
    assert how.mode == "full" and "changed" in how.reason
    assert members == ["a", "b"]
    assert run(store, corrected, daily(5))[1].mode == "incremental"


def test_a_replay_of_an_earlier_day_recomputes_and_leaves_the_state_alone(tmp_path: Path):
    frame = buys(("a", 1, 1), ("a", 2, 2), ("b", 5, 6))
    store = FeatureStateStore(tmp_path)
    run(store, frame, daily(4))
    run(store, frame, daily(6))
    members, how = run(store, frame, daily(3))
    assert how.mode == "full" and members == ["a"]
    assert store.load().as_of == daily(6)
    assert run(store, frame, daily(7))[1].mode == "incremental"


def test_other_features_start_a_new_chain(tmp_path: Path):
    frame = buys(("a", 1, 1), ("a", 2, 2))
    store = FeatureStateStore(tmp_path)
    run(store, frame, daily(3))
    other = {
        "buyers": SegmentDefinition.model_validate(
            {"name": "buyers", "rule": {"performed": {"event": "buy", "within": {"last": "3d"}}}}
        )
    }
    behaviour = behaviour_at(frame, [], daily(4))
    _, how = compute_memberships_with_state(
        other, pl.LazyFrame({"user_id": ["a"]}), behaviour, store, arrivals=arrivals_of(frame)
    )
    assert how.mode == "full" and "features" in how.reason


def test_a_dry_run_writes_no_state(tmp_path: Path):
    frame = buys(("a", 1, 1), ("a", 2, 2))
    store = FeatureStateStore(tmp_path / "state")
    behaviour = behaviour_at(frame, [], daily(3))
    compute_memberships_with_state(
        BUYERS_7D, pl.LazyFrame({"user_id": ["a"]}), behaviour, store, arrivals=arrivals_of(frame), persist=False
    )
    assert store.load() is None
