"""What a run sees of behaviour (raw events, day rollups, our deliveries), which events a statistic reads, and
statistics of raw rows in windows.

Windows are exact: a window [start, end) counts what happened from its start instant, not from a midnight. Event
statistics are computed in one pass for many windows at once (`engine.feature_pass`): rollups for the whole
days inside a window, raw events for the partial days at its edges. Rollups sum over all of a day's events
whatever their properties and keep no count of the values present, so a selection narrowed by properties, or an
average, is computed from raw events over the whole window instead (`rollups_serve`). Windows arrive resolved
(see `engine.rule_windows`): the same for everyone (two datetimes), or one per subject (`_start`, `_end`).
"""

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from typing import Literal

import polars as pl

from engine.rule_properties import Scalar, where_expr

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
    _shared: dict[str, pl.DataFrame] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def today(self) -> datetime:
        return datetime.combine(self.as_of.date(), time(), UTC)

    def shared(self, name: str, compute: Callable[[], pl.DataFrame]) -> pl.DataFrame:
        """A frame derived from this behaviour, computed by the first caller and reused by the later ones.

        Dispatch builds a run's contexts batch by batch; a builder that read history for each batch of 500 rows
        reread a 100M-event store hundreds of times in one run. What is derived from one as_of's behaviour is the
        same for every batch, so it is computed once per run (a run makes one Behaviour).
        """
        if name not in self._shared:
            self._shared[name] = compute()
        return self._shared[name]


@dataclass(frozen=True)
class EventFilter:
    """The events a statistic reads: one event name, narrowed by property equalities (sorted by key)."""

    event: str
    where: tuple[tuple[str, Scalar], ...] = ()

    def expr(self) -> pl.Expr:
        return (pl.col("event") == self.event) & where_expr(self.where)


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


def rollups_serve(events: EventFilter, stats: Collection[Stat]) -> bool:
    """Whether day rollups hold what these statistics need: no property filter (rollups sum a day's events whatever
    their properties) and no average (they keep no count of the values present)."""
    return not events.where and "avg" not in stats


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
