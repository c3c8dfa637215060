"""Many statistics of event windows in one pass over the data: per user for windows the same for everyone
(`window_stats`), per subject for windows of each subject's own (`subject_window_stats`).

Each statistic becomes a column of per-row contributions that is null where the row does not count, and one
group-by folds every column at once. For windows the same for everyone (`WindowStat`: one selection of events,
one [start, end), one statistic) rollup rows serve the whole days inside each window and raw events the partial
days at its edges and the selections rollups cannot serve (property filters, averages: see `engine.behaviour`);
the two kinds of rows are folded apart, each into only the statistics it serves, and joined. The rows are read
once for all statistics instead of once per statistic, and only the columns and days some statistic needs.

The result has one row per user who has any of the rows read (a count or sum of nothing there is 0; joined on
a population, it is null for everyone else, and `engine.features` fills it).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import polars as pl

from engine.behaviour import Behaviour, EventFilter, Stat, rollups_serve

DAY = timedelta(days=1)
USER_SLICES = 2
"""Users are folded in this many slices, one after the other, to bound a group-by's memory (see `_folded`)."""
SLICE_SEED = 20260901


@dataclass(frozen=True)
class WindowStat:
    """One statistic of the selected events in [start, end), as a column named `column`."""

    column: str
    events: EventFilter
    stat: Stat
    start: datetime
    end: datetime

    @property
    def rolled(self) -> bool:
        """Whether rollups serve it: whole days from rollups, edges from raw events."""
        return rollups_serve(self.events, {self.stat})

    @property
    def whole_days(self) -> tuple[date, date]:
        """The days [first, last) wholly inside the window (first >= last: none)."""
        return _ceil(self.start).date(), _floor(self.end).date()

    def raw_spans(self) -> list[tuple[datetime, datetime]]:
        """The instants this statistic reads from raw events: the edges, or the whole window if not rolled."""
        if self.start >= self.end:
            return []
        if not self.rolled:
            return [(self.start, self.end)]
        start_ceil, end_floor = _ceil(self.start), _floor(self.end)
        if start_ceil >= end_floor:
            return [(self.start, self.end)]
        return [(a, b) for a, b in ((self.start, start_ceil), (end_floor, self.end)) if a < b]


def window_stats(behaviour: Behaviour, stats: Sequence[WindowStat]) -> pl.LazyFrame:
    """`user_id` and one column per statistic, for every user with any row a statistic reads.

    The rollup rows and the raw rows are folded apart, each only into the statistics it serves (a window of
    less than a day has no whole day in the rollups, an average none at all), then joined: folding a column
    that is null on every row of a part costs as much as folding a real one.
    """
    in_rollups = [stat for stat in stats if stat.rolled and stat.whole_days[0] < stat.whole_days[1]]
    in_raw = [stat for stat in stats if stat.raw_spans()]
    parts = []
    if in_rollups:
        parts.append(_folded(_rollup_part(behaviour.rollups, in_rollups), in_rollups, "\0r"))
    if in_raw:
        parts.append(_folded(_raw_part(behaviour.events, in_raw), in_raw, "\0e"))
    if not parts:
        return pl.LazyFrame(schema={"user_id": pl.String, **{s.column: _dtype(s.stat) for s in stats}})
    frame = parts[0] if len(parts) == 1 else parts[0].join(parts[1], on="user_id", how="full", coalesce=True)
    frame = frame.lazy()
    present = {stat.column: [suffix for suffix, part in (("\0r", in_rollups), ("\0e", in_raw)) if stat in part]
               for stat in stats}  # fmt: skip
    return frame.select("user_id", *(_combined(stat, present[stat.column]) for stat in stats))


def _folded(rows: pl.LazyFrame, stats: Sequence[WindowStat], suffix: str) -> pl.DataFrame:
    """The rows folded per user, one slice of the users after the other.

    A group-by holds every group's running statistics until its input ends: over a million users and a dozen
    statistics that is hundreds of megabytes, per thread. Folding the users in slices (by a hash of the id, so
    every row of a user lands in one slice) divides that by the number of slices for one more read of the rows
    per slice; the slices hold different users, so their results simply stack.
    """
    folds = [fold.name.suffix(suffix) for stat in stats for fold in _partial_folds(stat)]
    slices = [
        rows.filter(pl.col("user_id").hash(SLICE_SEED) % USER_SLICES == index).group_by("user_id").agg(folds)
        for index in range(USER_SLICES)
    ]
    return pl.concat([part.collect(engine="streaming") for part in slices])


def _combined(stat: WindowStat, suffixes: list[str]) -> pl.Expr:
    """A statistic from its folds in each part (none: no row could count, so nothing happened)."""
    if not suffixes:
        return _none_folded(stat).alias(stat.column)
    if stat.stat == "avg":
        total = pl.sum_horizontal(pl.col(f"{stat.column}\0sum{suffix}") for suffix in suffixes)
        count = pl.sum_horizontal(pl.col(f"{stat.column}\0n{suffix}") for suffix in suffixes)
        return pl.when(count > 0).then(total / count).alias(stat.column)
    columns = [pl.col(f"{stat.column}{suffix}") for suffix in suffixes]
    if stat.stat in ("count", "sum"):
        return pl.sum_horizontal(columns).cast(_dtype(stat.stat)).alias(stat.column)
    lowest = stat.stat in ("min", "first")
    return (pl.min_horizontal(columns) if lowest else pl.max_horizontal(columns)).alias(stat.column)


def _none_folded(stat: WindowStat) -> pl.Expr:
    return pl.lit(0 if stat.stat in ("count", "sum") else None, _dtype(stat.stat))


@dataclass(frozen=True)
class SubjectStat:
    """One statistic of the selected events in each subject's own [_start, _end), as a column named `column`."""

    column: str
    events: EventFilter
    stat: Stat

    @property
    def rolled(self) -> bool:
        return rollups_serve(self.events, {self.stat})


def subject_window_stats(behaviour: Behaviour, bounds: pl.LazyFrame, stats: Sequence[SubjectStat]) -> pl.LazyFrame:
    """`subject_id` and one column per statistic, over windows given as `subject_id, user_id, _start, _end`.

    Windows differ per subject, so there is no fixed set of edge days to read raw: every rollup row in a
    window's days is judged by its first and last times instead. Wholly inside the window (every whole day is),
    it counts as it is; wholly outside, it does not; a row whose events straddle a window's end (the days a
    window starts or ends in the middle of) is replaced by its raw events, found by the row's own key (user,
    event, day, arrival). Those rows are few, so they are listed first (one eager step) and the raw events read
    only for their users. Today, which has no rollups yet, is read raw; selections rollups cannot serve are read
    raw over whole windows. Subjects whose window ends before the first day of data are skipped.
    """
    today = behaviour.today
    first_day = behaviour.rollups.select(pl.col("day").min().alias("_first"))
    bounds = (
        bounds.filter(pl.col("_start").is_not_null() & (pl.col("_start") < pl.col("_end")))
        .join(first_day, how="cross")
        .filter(pl.col("_end") > pl.coalesce(pl.col("_first").cast(pl.Datetime("us", "UTC")), pl.lit(today)))
        .drop("_first")
    )
    rolled = [stat for stat in stats if stat.rolled]
    parts = []
    if rolled:
        parts += _subject_rolled_parts(behaviour, bounds, rolled, stats)
    unrolled = [stat for stat in stats if not stat.rolled]
    if unrolled:
        names = sorted({stat.events.event for stat in unrolled})
        rows = bounds.join(behaviour.events.filter(pl.col("event").is_in(names)), on="user_id")
        columns = {s.column: _raw_contribution_between(s) if not s.rolled else _none(s) for s in stats}
        parts.append(rows.select("subject_id", *_expanded(columns, stats)))
    return pl.concat(parts).group_by("subject_id").agg(_fold(stat) for stat in stats)


def _subject_rolled_parts(
    behaviour: Behaviour, bounds: pl.LazyFrame, rolled: Sequence[SubjectStat], stats: Sequence[SubjectStat]
) -> list[pl.LazyFrame]:
    today = behaviour.today
    names = sorted({stat.events.event for stat in rolled})
    rows = (
        bounds.join(behaviour.rollups.filter(pl.col("event").is_in(names)), on="user_id")
        .filter((pl.col("day") >= pl.col("_start").dt.date()) & (pl.col("day") <= pl.col("_end").dt.date()))
        .with_columns(
            ((pl.col("first_ts") >= pl.col("_start")) & (pl.col("last_ts") < pl.col("_end"))).alias("_inside"),
            ((pl.col("last_ts") < pl.col("_start")) | (pl.col("first_ts") >= pl.col("_end"))).alias("_outside"),
        )
    )
    columns = {s.column: _subject_rollup_contribution(s) if s.rolled else _none(s) for s in stats}
    whole = (
        rows.filter(pl.col("_inside"))
        .select("subject_id", *_expanded(columns, stats))
        .group_by("subject_id")
        .agg(fold for stat in stats for fold in _partial_folds(stat))
    )
    keys = ["user_id", "event", "day", "load_date"]
    straddling = rows.filter(~pl.col("_inside") & ~pl.col("_outside")).select("subject_id", *keys, "_start", "_end")
    whole_frame, straddle_frame = pl.collect_all([whole, straddling])
    selected = pl.any_horizontal(stat.events.expr() for stat in rolled)
    raw_columns = {s.column: _raw_contribution_between(s) if s.rolled else _none(s) for s in stats}
    parts = [whole_frame.lazy()]
    if straddle_frame.height:
        users = straddle_frame.get_column("user_id").unique()
        split = (
            behaviour.events.filter(selected, pl.col("ts") < today, pl.col("user_id").is_in(users.implode()))
            .with_columns(pl.col("ts").dt.date().alias("day"))
            .join(straddle_frame.lazy(), on=keys)
        )
        parts.append(split.select("subject_id", *_expanded(raw_columns, stats)))
    current = bounds.filter(pl.col("_end") > today).join(
        behaviour.events.filter(selected, pl.col("ts") >= today), on="user_id"
    )
    parts.append(current.select("subject_id", *_expanded(raw_columns, stats)))
    return parts


def _subject_rollup_contribution(stat: SubjectStat) -> pl.Expr:
    return pl.when(pl.col("event") == stat.events.event).then(pl.col(_ROLLED_SOURCE[stat.stat]))


def _raw_contribution_between(stat: SubjectStat) -> pl.Expr | tuple[pl.Expr, pl.Expr]:
    """A raw row's contribution to a per-subject window: selected and in [_start, _end)."""
    held = stat.events.expr() & (pl.col("ts") >= pl.col("_start")) & (pl.col("ts") < pl.col("_end"))
    return _raw_value(stat.stat, held)


def _rollup_part(rollups: pl.LazyFrame, stats: Sequence[WindowStat]) -> pl.LazyFrame:
    first = min(stat.whole_days[0] for stat in stats)
    last = max(stat.whole_days[1] for stat in stats)
    events = sorted({stat.events.event for stat in stats})
    rows = rollups.filter(pl.col("event").is_in(events), pl.col("day") >= first, pl.col("day") < last)
    columns = {stat.column: _rollup_contribution(stat) for stat in stats}
    return rows.select("user_id", *_expanded(columns, stats))


def _raw_part(events: pl.LazyFrame, stats: Sequence[WindowStat]) -> pl.LazyFrame:
    spans = _merged(span for stat in stats for span in stat.raw_spans())
    names = sorted({stat.events.event for stat in stats})
    needed = _raw_columns(stats)
    rows = pl.concat(
        [
            events.filter(pl.col("ts") >= start, pl.col("ts") < end, pl.col("event").is_in(names)).select(needed)
            for start, end in spans
        ]
    )
    columns = {stat.column: _raw_contribution(stat) for stat in stats}
    return rows.select("user_id", *_expanded(columns, stats))


def _raw_columns(stats: Sequence[WindowStat]) -> list[str]:
    columns = ["user_id", "event", "ts"]
    if any(stat.stat in ("sum", "avg", "min", "max") for stat in stats):
        columns.append("value")
    if any(stat.events.where for stat in stats):
        columns.append("properties")
    return columns


def _rollup_contribution(stat: WindowStat) -> pl.Expr | tuple[pl.Expr, pl.Expr]:
    first, last = stat.whole_days
    held = (pl.col("event") == stat.events.event) & (pl.col("day") >= first) & (pl.col("day") < last)
    return pl.when(held).then(pl.col(_ROLLED_SOURCE[stat.stat]))


_ROLLED_SOURCE = {
    "count": "n",
    "sum": "value_sum",
    "min": "value_min",
    "max": "value_max",
    "first": "first_ts",
    "last": "last_ts",
}


def _raw_contribution(stat: WindowStat) -> pl.Expr | tuple[pl.Expr, pl.Expr]:
    inside = pl.lit(False)
    for start, end in stat.raw_spans():
        inside = inside | ((pl.col("ts") >= start) & (pl.col("ts") < end))
    return _raw_value(stat.stat, stat.events.expr() & inside)


def _raw_value(stat: Stat, held: pl.Expr) -> pl.Expr | tuple[pl.Expr, pl.Expr]:
    """What a raw event adds to a statistic where `held`, null elsewhere; an average as a sum and a count."""
    match stat:
        case "count":
            return pl.when(held).then(pl.lit(1, pl.UInt32))
        case "first" | "last":
            return pl.when(held).then(pl.col("ts"))
        case "avg":
            value = pl.when(held).then(pl.col("value"))
            return value, value.is_not_null().cast(pl.UInt32)
        case _:
            return pl.when(held).then(pl.col("value"))


def _none(stat: WindowStat | SubjectStat) -> pl.Expr | tuple[pl.Expr, pl.Expr]:
    if stat.stat == "avg":
        return pl.lit(None, pl.Float64), pl.lit(None, pl.UInt32)
    return pl.lit(None, _dtype(stat.stat))


def _expanded(
    columns: dict[str, pl.Expr | tuple[pl.Expr, pl.Expr]], stats: Sequence[WindowStat] | Sequence[SubjectStat]
) -> list[pl.Expr]:
    """Contribution columns with fixed types, so the parts concatenate; an average is a sum and a count."""
    out = []
    for stat in stats:
        contribution = columns[stat.column]
        if isinstance(contribution, tuple):
            total, count = contribution
            out += [total.cast(pl.Float64).alias(f"{stat.column}\0sum"), count.alias(f"{stat.column}\0n")]
        else:
            out.append(contribution.cast(_dtype(stat.stat)).alias(stat.column))
    return out


def _fold(stat: WindowStat | SubjectStat) -> pl.Expr:
    column = pl.col(stat.column)
    match stat.stat:
        case "count":
            return column.sum().cast(pl.UInt32).alias(stat.column)
        case "sum":
            return column.sum().alias(stat.column)
        case "min" | "first":
            return column.min().alias(stat.column)
        case "max" | "last":
            return column.max().alias(stat.column)
    total, count = pl.col(f"{stat.column}\0sum").sum(), pl.col(f"{stat.column}\0n").sum()
    return pl.when(count > 0).then(total / count).alias(stat.column)


def _partial_folds(stat: WindowStat | SubjectStat) -> list[pl.Expr]:
    """Folds that keep the contribution columns' names and types, so a folded part can be folded again."""
    if stat.stat == "avg":
        return [pl.col(f"{stat.column}\0sum").sum(), pl.col(f"{stat.column}\0n").sum()]
    return [_fold(stat)]


def _dtype(stat: Stat) -> pl.DataType:
    if stat == "count":
        return pl.UInt32()
    if stat in ("first", "last"):
        return pl.Datetime("us", "UTC")
    return pl.Float64()


def _merged(spans: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    """Disjoint spans covering the same instants, so a row is read once however many statistics read it."""
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _ceil(ts: datetime) -> datetime:
    floored = _floor(ts)
    return ts if floored == ts else floored + DAY


def _floor(ts: datetime) -> datetime:
    return datetime.combine(ts.date(), time(), UTC)
