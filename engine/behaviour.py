"""Exact event counts in time windows, from day rollups for whole days and raw events for the edges.

A window [start, end) is split at midnights: the whole days inside it come from the rollups (few rows), the
partial days at either end from raw events (only those hours are scanned). The two parts are disjoint and
cover the window exactly, so a window of "the last 7 days" at 06:00 counts what happened since 06:00 a week
ago, not since midnight: no rounding, unlike engines that only keep day buckets.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

import polars as pl

from models.rules import Window

DAY = timedelta(days=1)


@dataclass(frozen=True)
class Behaviour:
    """What a run can see of users' behaviour at its as_of."""

    as_of: datetime
    events: pl.LazyFrame  # canonical events with ts < as_of
    rollups: pl.LazyFrame  # whole days before as_of's day, arrived by then

    @property
    def today(self) -> datetime:
        return datetime.combine(self.as_of.date(), time(), UTC)


@dataclass(frozen=True)
class CountFeature:
    """A per-subject count of one event in one window; its column name is stable for a given spec."""

    event: str
    window: Window | None

    @property
    def column(self) -> str:
        window = "ever" if self.window is None else self.window.model_dump_json(by_alias=True, exclude_none=True)
        return f"count:{self.event}:{window}"


def ceil_day(ts: pl.Expr) -> pl.Expr:
    floored = ts.dt.truncate("1d")
    return pl.when(floored == ts).then(ts).otherwise(floored + DAY)


def count_constant_window(behaviour: Behaviour, feature: CountFeature) -> pl.LazyFrame:
    """Counts per user for a window that is the same for everyone (`last`, or all history)."""
    end = behaviour.as_of
    start = datetime.min.replace(tzinfo=UTC) if feature.window is None else end - _last(feature.window)
    start_ceil = _ceil(start)
    end_floor = behaviour.today
    whole = behaviour.rollups.filter(
        (pl.col("event") == feature.event) & (pl.col("day") >= start_ceil.date()) & (pl.col("day") < end_floor.date())
    ).select("user_id", "n")
    edges = behaviour.events.filter(
        (pl.col("event") == feature.event)
        & (pl.col("ts") >= start)
        & (pl.col("ts") < end)
        & ((pl.col("ts") < start_ceil) | (pl.col("ts") >= end_floor) | pl.lit(start_ceil > end_floor))
    ).select("user_id", pl.lit(1, pl.UInt32).alias("n"))
    return pl.concat([whole, edges]).group_by("user_id").agg(pl.col("n").sum().cast(pl.UInt32).alias(feature.column))


def count_subject_windows(behaviour: Behaviour, subjects: pl.LazyFrame, feature: CountFeature) -> pl.LazyFrame:
    """Counts per subject whose window bounds are its own columns `_start` and `_end` (exclusive).

    Used for windows anchored on a user attribute (`after: signed_up_at`) or a journey entry (`since: entry`).
    Returns `subject_id` and the count column.
    """
    bounds = subjects.select(
        "subject_id",
        "user_id",
        "_start",
        pl.min_horizontal("_end", pl.lit(behaviour.as_of)).alias("_end"),
    ).filter(pl.col("_start").is_not_null() & (pl.col("_start") < pl.col("_end")))
    bounds = bounds.with_columns(
        ceil_day(pl.col("_start")).alias("_start_ceil"), pl.col("_end").dt.truncate("1d").alias("_end_floor")
    )
    whole = (
        bounds.join(behaviour.rollups.filter(pl.col("event") == feature.event), on="user_id")
        .filter((pl.col("day") >= pl.col("_start_ceil").dt.date()) & (pl.col("day") < pl.col("_end_floor").dt.date()))
        .select("subject_id", "n")
    )
    edges = (
        bounds.join(behaviour.events.filter(pl.col("event") == feature.event), on="user_id")
        .filter(
            (pl.col("ts") >= pl.col("_start"))
            & (pl.col("ts") < pl.col("_end"))
            & (
                (pl.col("ts") < pl.col("_start_ceil"))
                | (pl.col("ts") >= pl.col("_end_floor"))
                | (pl.col("_start_ceil") > pl.col("_end_floor"))
            )
        )
        .select("subject_id", pl.lit(1, pl.UInt32).alias("n"))
    )
    return pl.concat([whole, edges]).group_by("subject_id").agg(pl.col("n").sum().cast(pl.UInt32).alias(feature.column))


def _last(window: Window) -> timedelta:
    if window.last is None:
        raise ValueError(f"window {window} is not a constant window")
    return window.last


def _ceil(ts: datetime) -> datetime:
    floored = datetime.combine(ts.date(), time(), UTC)
    return ts if floored == ts else floored + DAY
