"""Exact window statistics (rollups for whole days, raw events at the edges) against a naive pass over raw events.

Both passes of `engine.feature_pass`: windows the same for everyone (`window_stats`) and each subject's own
(`subject_window_stats`, whose rollup rows straddling a window's end are replaced by their raw events).
"""

from datetime import UTC, datetime, timedelta

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.behaviour import EventFilter
from engine.feature_pass import SubjectStat, WindowStat, subject_window_stats, window_stats
from tests.behaviours import Row, behaviour_from_rows

BASE = datetime(2026, 3, 1, tzinfo=UTC)
EVENTS = ("view_item", "purchase")
STATS = ("count", "sum", "min", "max", "first", "last")  # everything rollups can serve


def naive(rows: list[Row], inside) -> dict[str, tuple]:
    """The same statistics per user, by hand, over the rows whose user and time `inside` accepts."""
    picked: dict[str, list[tuple[datetime, float | None]]] = {}
    for user, event, ts, value in rows:
        if event == "purchase" and inside(user, ts):
            picked.setdefault(user, []).append((ts, value))
    result = {}
    for user, hits in picked.items():
        values = [v for _, v in hits if v is not None]
        times = [ts for ts, _ in hits]
        low, high = (min(values), max(values)) if values else (None, None)
        result[user] = (len(hits), sum(values), low, high, min(times), max(times))
    return result


def got(frame: pl.LazyFrame) -> dict[str, tuple]:
    """Per user (or subject) with anything counted: a pass may list others, with a count of 0."""
    counted = frame.select(pl.first(), *STATS).filter(pl.col("count") > 0).collect()
    return {row[0]: row[1:] for row in counted.iter_rows()}


def constant(start: datetime, end: datetime, stats=STATS) -> list[WindowStat]:
    return [WindowStat(stat, EventFilter("purchase"), stat, start, end) for stat in stats]


offsets = st.integers(min_value=0, max_value=20 * 24 * 60)  # minutes after BASE
rows_strategy = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", "u3"]), st.sampled_from(EVENTS), offsets, st.sampled_from([None, 0.5, 2.0, 4.5])
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(rows=rows_strategy, as_of_minutes=offsets, window_minutes=st.integers(1, 10 * 24 * 60))
def test_constant_window_statistics_equal_naive_ones(rows, as_of_minutes, window_minutes):
    rows = [(u, e, BASE + timedelta(minutes=m), v) for u, e, m, v in rows]
    as_of = BASE + timedelta(minutes=as_of_minutes)
    start = as_of - timedelta(minutes=window_minutes)

    stats = window_stats(behaviour_from_rows(rows, as_of), constant(start, as_of))

    assert got(stats) == naive(rows, lambda user, ts: start <= ts < as_of)


@settings(max_examples=150, deadline=None)
@given(
    rows=rows_strategy,
    as_of_minutes=offsets,
    starts=st.lists(offsets, min_size=3, max_size=3),
    length_minutes=st.integers(1, 10 * 24 * 60),
)
def test_per_subject_window_statistics_equal_naive_ones(rows, as_of_minutes, starts, length_minutes):
    rows = [(u, e, BASE + timedelta(minutes=m), v) for u, e, m, v in rows]
    as_of = BASE + timedelta(minutes=as_of_minutes)
    users = ["u1", "u2", "u3"]
    starts_at = {u: BASE + timedelta(minutes=m) for u, m in zip(users, starts, strict=True)}
    ends_at = {u: min(starts_at[u] + timedelta(minutes=length_minutes), as_of) for u in users}
    bounds = pl.LazyFrame(
        {
            "subject_id": users,
            "user_id": users,
            "_start": [starts_at[u] for u in users],
            "_end": [ends_at[u] for u in users],
        },
        schema_overrides={"_start": pl.Datetime("us", "UTC"), "_end": pl.Datetime("us", "UTC")},
    )

    per_subject = [SubjectStat(stat, EventFilter("purchase"), stat) for stat in STATS]
    stats = subject_window_stats(behaviour_from_rows(rows, as_of), bounds, per_subject)

    assert got(stats) == naive(rows, lambda user, ts: starts_at[user] <= ts < ends_at[user])


def test_window_at_a_non_midnight_as_of_is_not_rounded_to_days():
    as_of = datetime(2026, 3, 8, 6, tzinfo=UTC)
    rows = [
        ("u1", "purchase", datetime(2026, 3, 1, 5, 59, tzinfo=UTC), 1.0),  # 7 days and 1 minute before: outside
        ("u2", "purchase", datetime(2026, 3, 1, 6, 0, tzinfo=UTC), 1.0),  # exactly 7 days before: inside
        ("u3", "purchase", datetime(2026, 3, 8, 6, 0, tzinfo=UTC), 1.0),  # at as_of: not yet
    ]
    counts = window_stats(behaviour_from_rows(rows, as_of), constant(as_of - timedelta(days=7), as_of, ["count"]))
    assert dict(counts.filter(pl.col("count") > 0).collect().iter_rows()) == {"u2": 1}
