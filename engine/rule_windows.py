"""Windows of the rule language resolved to exact [start, end) bounds at a run's as_of.

Resolved bounds are half-open and in microseconds, the resolution of event timestamps, so `closed` only moves a
bound by one microsecond (`ts > a` is `ts >= a + 1µs`) and every counting path handles a single kind of
interval. The end is clipped to as_of: nothing at or after it is visible. A window that is the same for
everyone (`last`, `between`, all history) resolves to two datetimes, so filters on it can prune rollup days;
the others (`after`, `after_first`, `since`) resolve to two expressions over each subject's columns.
"""

from datetime import UTC, datetime, timedelta

import polars as pl

from models.rules import Window

TICK = timedelta(microseconds=1)
EVER = datetime.min.replace(tzinfo=UTC)


def is_constant(window: Window | None) -> bool:
    """Whether the window is the same for every subject (all history when None)."""
    return window is None or window.last is not None or window.between is not None


def constant_bounds(window: Window | None, as_of: datetime) -> tuple[datetime, datetime]:
    """[start, end) of a window that is the same for everyone; start >= end means empty."""
    if window is None:
        return EVER, as_of
    if window.last is not None:
        start, end = as_of - window.last, as_of
    elif window.between is not None:
        start, end = window.between.from_, window.between.to
    else:
        raise ValueError(f"window {window} differs per subject")
    return start + _start_shift(window), min(end + _end_shift(window), as_of)


def subject_bounds(window: Window, as_of: datetime, *, anchor: str | None = None) -> tuple[pl.Expr, pl.Expr]:
    """[start, end) per subject as expressions; null or start >= end means empty.

    `after` reads the named attribute, `since: entry` the subject's `entered_at`, and `after_first` the
    column `anchor`, which must hold each user's first such event (see `engine.features.first_seen`).
    """
    if window.since is not None:
        start = pl.col("entered_at")
    elif window.after is not None:
        start = pl.col(window.after)
    elif window.after_first is not None and anchor is not None:
        start = pl.col(anchor)
    else:
        raise ValueError(f"window {window} is the same for every subject, or lacks its anchor column")
    end = pl.lit(as_of) if window.for_ is None else start + window.for_
    clipped = pl.min_horizontal(end + _end_shift(window), pl.lit(as_of))
    return start + _start_shift(window), pl.when(start.is_not_null()).then(clipped)


def bounds_exprs(window: Window | None, as_of: datetime, *, anchor: str | None = None) -> tuple[pl.Expr, pl.Expr]:
    """Either kind of window as two expressions, for tests on a timestamp column."""
    if is_constant(window):
        start, end = constant_bounds(window, as_of)
        return pl.lit(start), pl.lit(end)
    assert window is not None
    return subject_bounds(window, as_of, anchor=anchor)


def resolve_moment(moment: timedelta | datetime, as_of: datetime) -> datetime:
    """A moment of a definition at this as_of: a duration counts back from as_of."""
    return as_of - moment if isinstance(moment, timedelta) else moment


def _start_shift(window: Window) -> timedelta:
    return TICK if window.closed in ("right", "none") else timedelta(0)


def _end_shift(window: Window) -> timedelta:
    return TICK if window.closed in ("right", "both") else timedelta(0)
