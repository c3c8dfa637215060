"""When a wait ends: the next local time of day in a user's time zone, exactly, across DST changes.

"Until 09:00" means the user's wall clock, so the instant differs per time zone and, around a DST change, per
day. Instances arriving in one run share their arrival instant, so the answer depends on (time zone, arrival)
only: it is computed once per distinct pair with the standard library's tz database (a few hundred pairs at
most) and joined back onto the population, rather than per instance.
"""

from datetime import UTC, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

from engine.journey_state import MOMENT


def local_time_dues(arrivals: pl.DataFrame, wall: time) -> pl.DataFrame:
    """For rows `instance_id, timezone, arrived`: `instance_id, due`, the next `wall` on the clock of
    `timezone` strictly after arrival (see `next_wall_time`; UTC when the zone is missing or unknown)."""
    keyed = arrivals.with_columns(pl.col("timezone").fill_null("UTC"))
    pairs = keyed.select("timezone", "arrived").unique().sort("timezone", "arrived")
    dues = [next_wall_time(arrived, zone, wall) for zone, arrived in pairs.iter_rows()]
    table = pairs.with_columns(pl.Series("due", dues, dtype=MOMENT))
    return keyed.join(table, on=["timezone", "arrived"], how="left").select("instance_id", "due")


@lru_cache(maxsize=8192)
def next_wall_time(after: datetime, zone: str, wall: time) -> datetime:
    """The first day's `wall` in `zone` that is strictly after `after`: once a day, as people read a clock.

    On a day the clock skips `wall` (spring forward) that day's instant is the end of the skip; on a day it
    shows it twice (fall back), the first showing.
    """
    tz = _zone(zone)
    day = after.astimezone(tz).date()
    for offset in range(3):  # today, tomorrow, or (where a zone skipped a whole day) the day after
        candidate = first_showing(datetime.combine(day + timedelta(days=offset), wall), tz)
        if candidate > after:
            return candidate
    raise AssertionError(f"no {wall} in {zone} within three days of {after}")


def first_showing(wall: datetime, tz: ZoneInfo) -> datetime:
    """The first instant at which a clock in `tz` shows the naive `wall`, or the first one after, if skipped."""
    shown = wall
    while True:
        aware = shown.replace(tzinfo=tz, fold=0)  # fold=0: the first of two showings
        instant = aware.astimezone(UTC)
        if instant.astimezone(tz).replace(tzinfo=None) == shown:
            return instant
        shown += timedelta(minutes=1)  # inside a skipped stretch: tz offsets are whole minutes


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")
