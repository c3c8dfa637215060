"""Exact window counts (rollups for whole days, raw events at the edges) against a naive count over raw events."""

from datetime import UTC, datetime, timedelta

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.behaviour import Behaviour, CountFeature, count_constant_window, count_subject_windows
from engine.rollups import rollup_events
from models.rules import Window

BASE = datetime(2026, 3, 1, tzinfo=UTC)
EVENTS = ("view_item", "purchase")


def behaviour(rows: list[tuple[str, str, datetime]], as_of: datetime) -> Behaviour:
    events = pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "event": [r[1] for r in rows],
            "ts": [r[2] for r in rows],
            "value": [1.0] * len(rows),
        },
        schema={"user_id": pl.String, "event": pl.String, "ts": pl.Datetime("us", "UTC"), "value": pl.Float64},
    ).with_columns(pl.col("ts").dt.date().alias("load_date"))
    visible = events.lazy().filter(pl.col("ts") < as_of)
    return Behaviour(as_of=as_of, events=visible, rollups=rollup_events(visible).filter(pl.col("day") < as_of.date()))


offsets = st.integers(min_value=0, max_value=20 * 24 * 60)  # minutes after BASE
rows_strategy = st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.sampled_from(EVENTS), offsets), max_size=60)


@settings(max_examples=150, deadline=None)
@given(rows=rows_strategy, as_of_minutes=offsets, window_minutes=st.integers(1, 10 * 24 * 60))
def test_last_window_counts_equal_naive_counts(rows, as_of_minutes, window_minutes):
    rows = [(u, e, BASE + timedelta(minutes=m)) for u, e, m in rows]
    as_of = BASE + timedelta(minutes=as_of_minutes)
    window = Window(last=f"{window_minutes}m")
    feature = CountFeature("purchase", window)

    got = dict(count_constant_window(behaviour(rows, as_of), feature).collect().iter_rows())

    start = as_of - timedelta(minutes=window_minutes)
    expected: dict[str, int] = {}
    for user, event, ts in rows:
        if event == "purchase" and start <= ts < as_of:
            expected[user] = expected.get(user, 0) + 1
    assert {u: n for u, n in got.items() if n} == expected


@settings(max_examples=150, deadline=None)
@given(
    rows=rows_strategy,
    as_of_minutes=offsets,
    starts=st.lists(offsets, min_size=3, max_size=3),
    length_minutes=st.integers(1, 10 * 24 * 60),
)
def test_per_subject_windows_equal_naive_counts(rows, as_of_minutes, starts, length_minutes):
    rows = [(u, e, BASE + timedelta(minutes=m)) for u, e, m in rows]
    as_of = BASE + timedelta(minutes=as_of_minutes)
    users = ["u1", "u2", "u3"]
    bounds = {u: BASE + timedelta(minutes=m) for u, m in zip(users, starts, strict=True)}
    subjects = pl.LazyFrame(
        {
            "subject_id": users,
            "user_id": users,
            "_start": [bounds[u] for u in users],
            "_end": [bounds[u] + timedelta(minutes=length_minutes) for u in users],
        },
        schema_overrides={"_start": pl.Datetime("us", "UTC"), "_end": pl.Datetime("us", "UTC")},
    )
    feature = CountFeature("purchase", Window(after="signed_up_at", **{"for": f"{length_minutes}m"}))

    got = dict(count_subject_windows(behaviour(rows, as_of), subjects, feature).collect().iter_rows())

    expected: dict[str, int] = {}
    for user, event, ts in rows:
        end = min(bounds[user] + timedelta(minutes=length_minutes), as_of)
        if event == "purchase" and bounds[user] <= ts < end:
            expected[user] = expected.get(user, 0) + 1
    assert {u: n for u, n in got.items() if n} == expected


def test_window_at_a_non_midnight_as_of_is_not_rounded_to_days():
    as_of = datetime(2026, 3, 8, 6, tzinfo=UTC)
    rows = [
        ("u1", "purchase", datetime(2026, 3, 1, 5, 59, tzinfo=UTC)),  # 7 days and 1 minute before: outside
        ("u2", "purchase", datetime(2026, 3, 1, 6, 0, tzinfo=UTC)),  # exactly 7 days before: inside
        ("u3", "purchase", datetime(2026, 3, 8, 6, 0, tzinfo=UTC)),  # at as_of: not yet
    ]
    got = dict(
        count_constant_window(behaviour(rows, as_of), CountFeature("purchase", Window(last="7d"))).collect().iter_rows()
    )
    assert got == {"u2": 1}
