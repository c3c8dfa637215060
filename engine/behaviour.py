"""Exact statistics of events in time windows, from day rollups for whole days and raw events for the edges.

A window [start, end) is split at midnights: the whole days inside it come from the rollups (few rows), the
partial days at either end from raw events (only those hours are scanned). The two parts are disjoint and
cover the window exactly, so a window of "the last 7 days" at 06:00 counts what happened since 06:00 a week
ago, not since midnight: no rounding, unlike engines that only keep day buckets.

Rollups sum over all of a day's events whatever their properties, and keep no count of the values present, so
a selection narrowed by properties, or an average, is computed from raw events over the whole window instead.
Windows arrive resolved (see `engine.rule_windows`): the same for everyone (two datetimes), or one per subject
(columns `_start`, `_end`).
"""

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Literal

import polars as pl

from engine.rule_properties import Scalar, where_expr

DAY = timedelta(days=1)
Stat = Literal["count", "sum", "avg", "min", "max", "first", "last"]
DELIVERY_SCHEMA = pl.Schema(
    {
        "user_id": pl.String,
        "journey": pl.String,
        "template": pl.String,
        "channel": pl.String,
        "kind": pl.String,  # received, opened, clicked
        "ts": pl.Datetime("us", "UTC"),
    }
)


@dataclass(frozen=True)
class Behaviour:
    """What a run can see of users' behaviour at its as_of."""

    as_of: datetime
    events: pl.LazyFrame  # canonical events with ts < as_of
    rollups: pl.LazyFrame  # whole days before as_of's day, arrived by then
    deliveries: pl.LazyFrame = field(default_factory=lambda: pl.LazyFrame(schema=DELIVERY_SCHEMA))  # our messages

    @property
    def today(self) -> datetime:
        return datetime.combine(self.as_of.date(), time(), UTC)


@dataclass(frozen=True)
class EventFilter:
    """The events a statistic reads: one event name, narrowed by property equalities (sorted by key)."""

    event: str
    where: tuple[tuple[str, Scalar], ...] = ()

    def expr(self) -> pl.Expr:
        return (pl.col("event") == self.event) & where_expr(self.where)


def event_stats(
    behaviour: Behaviour, events: EventFilter, stats: Collection[Stat], *, start: datetime, end: datetime
) -> pl.LazyFrame:
    """Per user, each statistic (one column named after it) of `events` in [start, end), end <= as_of."""
    selected = behaviour.events.filter(events.expr())
    if not _rollups_serve(events, stats):
        return row_stats(selected, stats, start=start, end=end)
    start_ceil, end_floor = _ceil(start), _floor(end)
    whole = behaviour.rollups.filter(
        (pl.col("event") == events.event) & (pl.col("day") >= start_ceil.date()) & (pl.col("day") < end_floor.date())
    ).select("user_id", *_ROLLED)
    edges = selected.filter(
        (pl.col("ts") >= start)
        & (pl.col("ts") < end)
        & ((pl.col("ts") < start_ceil) | (pl.col("ts") >= end_floor) | pl.lit(start_ceil > end_floor))
    ).select("user_id", *_as_rolled())
    return pl.concat([whole, edges]).group_by("user_id").agg(_rolled_aggs(stats))


def event_stats_per_subject(
    behaviour: Behaviour, bounds: pl.LazyFrame, events: EventFilter, stats: Collection[Stat]
) -> pl.LazyFrame:
    """Per subject, each statistic of `events` in its own [_start, _end), given as `subject_id, user_id, _start,
    _end` (end <= as_of; null start means no window).
    """
    selected = behaviour.events.filter(events.expr())
    if not _rollups_serve(events, stats):
        return row_stats_per_subject(selected, bounds, stats)
    bounds = _nonempty(bounds).with_columns(
        _ceil_expr(pl.col("_start")).alias("_start_ceil"), pl.col("_end").dt.truncate("1d").alias("_end_floor")
    )
    whole = (
        bounds.join(behaviour.rollups.filter(pl.col("event") == events.event), on="user_id")
        .filter((pl.col("day") >= pl.col("_start_ceil").dt.date()) & (pl.col("day") < pl.col("_end_floor").dt.date()))
        .select("subject_id", *_ROLLED)
    )
    edges = (
        bounds.join(selected, on="user_id")
        .filter(
            (pl.col("ts") >= pl.col("_start"))
            & (pl.col("ts") < pl.col("_end"))
            & (
                (pl.col("ts") < pl.col("_start_ceil"))
                | (pl.col("ts") >= pl.col("_end_floor"))
                | (pl.col("_start_ceil") > pl.col("_end_floor"))
            )
        )
        .select("subject_id", *_as_rolled())
    )
    return pl.concat([whole, edges]).group_by("subject_id").agg(_rolled_aggs(stats))


def row_stats(rows: pl.LazyFrame, stats: Collection[Stat], *, start: datetime, end: datetime) -> pl.LazyFrame:
    """Per user, statistics of raw rows (`user_id`, `ts`, and `value` unless only counting) in [start, end)."""
    return rows.filter((pl.col("ts") >= start) & (pl.col("ts") < end)).group_by("user_id").agg(_raw_aggs(stats))


def row_stats_per_subject(rows: pl.LazyFrame, bounds: pl.LazyFrame, stats: Collection[Stat]) -> pl.LazyFrame:
    """Per subject, statistics of raw rows in each subject's own [_start, _end)."""
    return (
        _nonempty(bounds)
        .join(rows, on="user_id")
        .filter((pl.col("ts") >= pl.col("_start")) & (pl.col("ts") < pl.col("_end")))
        .group_by("subject_id")
        .agg(_raw_aggs(stats))
    )


_ROLLED = ("n", "value_sum", "value_min", "value_max", "first_ts", "last_ts")


def _rollups_serve(events: EventFilter, stats: Collection[Stat]) -> bool:
    return not events.where and "avg" not in stats


def _as_rolled() -> list[pl.Expr]:
    """Raw events in the shape of rollup rows, so the two concatenate."""
    return [
        pl.lit(1, pl.UInt32).alias("n"),
        pl.col("value").alias("value_sum"),
        pl.col("value").alias("value_min"),
        pl.col("value").alias("value_max"),
        pl.col("ts").alias("first_ts"),
        pl.col("ts").alias("last_ts"),
    ]


def _rolled_aggs(stats: Collection[Stat]) -> list[pl.Expr]:
    aggs = {
        "count": pl.col("n").sum().cast(pl.UInt32),
        "sum": pl.col("value_sum").sum(),
        "min": pl.col("value_min").min(),
        "max": pl.col("value_max").max(),
        "first": pl.col("first_ts").min(),
        "last": pl.col("last_ts").max(),
    }
    return [aggs[stat].alias(stat) for stat in sorted(stats)]


def _raw_aggs(stats: Collection[Stat]) -> list[pl.Expr]:
    """An average is the exact sum over the count of values, as a person would compute it."""
    aggs = {
        "count": pl.len().cast(pl.UInt32),
        "sum": pl.col("value").sum(),
        "avg": pl.when(pl.col("value").count() > 0).then(pl.col("value").sum() / pl.col("value").count()),
        "min": pl.col("value").min(),
        "max": pl.col("value").max(),
        "first": pl.col("ts").min(),
        "last": pl.col("ts").max(),
    }
    return [aggs[stat].alias(stat) for stat in sorted(stats)]


def _nonempty(bounds: pl.LazyFrame) -> pl.LazyFrame:
    return bounds.filter(pl.col("_start").is_not_null() & (pl.col("_start") < pl.col("_end")))


def _ceil_expr(ts: pl.Expr) -> pl.Expr:
    floored = ts.dt.truncate("1d")
    return pl.when(floored == ts).then(ts).otherwise(floored + DAY)


def _ceil(ts: datetime) -> datetime:
    floored = _floor(ts)
    return ts if floored == ts else floored + DAY


def _floor(ts: datetime) -> datetime:
    return datetime.combine(ts.date(), time(), UTC)
