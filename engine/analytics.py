"""Who uses the product and how segments grow: active users, retention cohorts and segment size trends.

A user is active on a UTC day when they performed an event that day: any event of the product's, or only the
named one when `event` is given (e.g. `app_open`). Events derived from provider feedback (`email_delivered`,
`email_open`, ...) never count: a delivered email is nothing the user did, and opening our mail is not using
the product. Only complete days count: the day of `as_of` is still going on, so the last day reported is the
one before it, and the figures for an as_of do not move as more events of its own day arrive.

Everything is computed in Polars over the whole population, and depends only on the events and `as_of`.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import polars as pl
from sqlalchemy import select
from sqlalchemy.engine import Connection

from engine.feedback.meanings import MEANINGS
from models.tables import SegmentSize

_SIZES = SegmentSize.__table__  # type: ignore[attr-defined]
WEEK, MONTH = 7, 28
"""Rolling windows, in days ending with the day reported: MAU spans four whole weeks, so every weekday weighs
the same in it, whichever day it is reported on (a 30-day window counts two weekdays five times)."""
RETENTION_DAYS = (1, 7, 30)
PROVIDER_EVENTS = frozenset(meaning.behaviour_event for meaning in MEANINGS.values() if meaning.behaviour_event)


@dataclass(frozen=True)
class ActiveUsers:
    """`days`: day, dau, wau, mau, stickiness (dau / mau), one row per reported day in order."""

    as_of: datetime
    event: str | None
    days: pl.DataFrame

    def markdown(self) -> str:
        lines = [
            "### Active users",
            "",
            f"Distinct users active ({_activity(self.event)}) on the day (DAU), in the {WEEK} days (WAU) and the "
            f"{MONTH} days (MAU) ending with it; UTC days up to the last complete one before "
            f"{self.as_of:%Y-%m-%d %H:%M} UTC.",
            "",
        ]
        rows = [
            [f"{day['day']}", cell(day["dau"]), cell(day["wau"]), cell(day["mau"]), percent(day["stickiness"])]
            for day in self.days.iter_rows(named=True)
        ]
        return "\n".join(lines + markdown_table(["day", "DAU", "WAU", "MAU", "DAU/MAU"], rows, numeric_from=1))


@dataclass(frozen=True)
class Retention:
    """`cohorts`: cohort (first active day), users, then d1, d7, d30: the share of the cohort active on the
    cohort's day plus 1, 7, 30; null while that day is not complete."""

    as_of: datetime
    event: str | None
    cohorts: pl.DataFrame

    def markdown(self) -> str:
        lines = [
            "### Retention",
            "",
            f"Users by the UTC day they were first active ({_activity(self.event)}; as far back as the events go), "
            f"and the share of them active again exactly 1, 7 and 30 days later, as of {self.as_of:%Y-%m-%d %H:%M} "
            "UTC; n/a: that day is not over yet.",
            "",
        ]
        header = ["cohort", "users", *(f"D{days}" for days in RETENTION_DAYS)]
        rows = [
            [f"{row['cohort']}", cell(row["users"]), *(percent(row[f"d{days}"]) for days in RETENTION_DAYS)]
            for row in self.cohorts.iter_rows(named=True)
        ]
        return "\n".join(lines + markdown_table(header, rows, numeric_from=1))


@dataclass(frozen=True)
class SegmentTrends:
    """`runs`: segment, as_of, size, entered, exited, change (since the segment's previous recorded run, null for
    its first) and redefined (its definition changed since that run, so the change is not all behaviour)."""

    start: date
    end: date
    runs: pl.DataFrame

    def markdown(self) -> str:
        """Sizes by run and segment, each with its change since the previous run; `*` marks a new definition."""
        segments = sorted(set(self.runs.get_column("segment").to_list()))
        cells: dict[datetime, dict[str, str]] = {}
        for run in self.runs.iter_rows(named=True):
            change = "" if run["change"] is None else f" ({run['change']:+,})"
            mark = " *" if run["redefined"] else ""
            cells.setdefault(run["as_of"], {})[run["segment"]] = f"{run['size']:,}{change}{mark}"
        rows = [[f"{as_of:%Y-%m-%d %H:%M}", *(by.get(name, "") for name in segments)] for as_of, by in cells.items()]
        intro = f"Sizes per run from {self.start} to {self.end}, with the change since the segment's run before."
        table = markdown_table(["as_of", *segments], rows, numeric_from=1)
        return "\n".join(["### Segment sizes", "", intro, "", *table])


def active_users(events: pl.LazyFrame, *, as_of: datetime, days: int = 30, event: str | None = None) -> ActiveUsers:
    """DAU, WAU and MAU for each of the last `days` complete UTC days before `as_of`."""
    last = _last_complete_day(as_of)
    first = last - timedelta(days=days - 1)
    active = _active_days(events, event=event, since=first - timedelta(days=MONTH - 1), through=last).collect()
    calendar = pl.DataFrame({"day": pl.date_range(first, last, eager=True)})
    frame = (
        calendar.join(active.group_by("day").agg(pl.len().alias("dau")), on="day", how="left")
        .join(_rolling_distinct(active, WEEK, through=last).rename({"users": "wau"}), on="day", how="left")
        .join(_rolling_distinct(active, MONTH, through=last).rename({"users": "mau"}), on="day", how="left")
        .sort("day")
        .with_columns(pl.col("dau", "wau", "mau").fill_null(0).cast(pl.Int64))
        .with_columns(pl.when(pl.col("mau") > 0).then(pl.col("dau") / pl.col("mau")).alias("stickiness"))
    )
    return ActiveUsers(as_of, event, frame)


def retention(events: pl.LazyFrame, *, as_of: datetime, days: int = 60, event: str | None = None) -> Retention:
    """D1, D7 and D30 retention of the users first active on each of the last `days` complete days before `as_of`.

    A cohort is the users whose first activity in all the events given fell on that day, so pass every event
    since the beginning, not a window; days without a new user have no row. Day N retention is the share of
    the cohort active on exactly the cohort's day plus N, not on any day up to it (classic day-N retention).
    """
    last = _last_complete_day(as_of)
    first = last - timedelta(days=days - 1)
    active = _active_days(events, event=event, since=None, through=last)
    cohorts = (
        active.group_by("user_id")
        .agg(pl.col("day").min().alias("cohort"))
        .filter(pl.col("cohort").is_between(first, last))
    )
    age = (pl.col("day") - pl.col("cohort")).dt.total_days()
    returned = cohorts.join(active, on="user_id").filter(age.is_in(RETENTION_DAYS))
    counts = returned.group_by("cohort").agg(
        (age == days_later).sum().alias(f"back{days_later}") for days_later in RETENTION_DAYS
    )
    frame = (
        cohorts.group_by("cohort")
        .agg(pl.len().cast(pl.Int64).alias("users"))
        .join(counts, on="cohort", how="left")
        .sort("cohort")
        .select(
            "cohort",
            "users",
            *(
                pl.when(pl.col("cohort") + timedelta(days=days_later) <= last)
                .then(pl.col(f"back{days_later}").fill_null(0) / pl.col("users"))
                .alias(f"d{days_later}")
                for days_later in RETENTION_DAYS
            ),
        )
        .collect()
    )
    return Retention(as_of, event, frame)


def segment_trends(conn: Connection, *, start: date, end: date) -> SegmentTrends:
    """Each segment's recorded size at every run with an as_of on a day from `start` to `end` (UTC).

    The change of a segment's first run in the range is measured from its last run before `start`, so a range
    starting today still says how today differs from yesterday.
    """
    query = select(
        _SIZES.c.segment, _SIZES.c.as_of, _SIZES.c.definition_version, _SIZES.c.size, _SIZES.c.entered, _SIZES.c.exited
    ).where(_SIZES.c.as_of < _midnight(end + timedelta(days=1)))
    schema = {
        "segment": pl.String,
        "as_of": pl.Datetime("us", "UTC"),
        "version": pl.String,
        "size": pl.Int64,
        "entered": pl.Int64,
        "exited": pl.Int64,
    }
    recorded = pl.DataFrame([tuple(row) for row in conn.execute(query).all()], schema=schema, orient="row")
    before = {name: pl.col(name).shift().over("segment", order_by="as_of") for name in ("size", "version")}
    runs = (
        recorded.with_columns(
            (pl.col("size") - before["size"]).alias("change"),
            (pl.col("version") != before["version"]).alias("redefined"),
        )
        .filter(pl.col("as_of") >= _midnight(start))
        .sort("as_of", "segment")
        .select("segment", "as_of", "size", "entered", "exited", "change", pl.col("redefined").fill_null(False))
    )
    return SegmentTrends(start, end, runs)


def _active_days(events: pl.LazyFrame, *, event: str | None, since: date | None, through: date) -> pl.LazyFrame:
    """`user_id, day`: each user's active days from `since` (the beginning when None) to `through`, once each."""
    chosen = pl.col("event") == event if event else ~pl.col("event").is_in(PROVIDER_EVENTS)
    window = pl.col("ts") < _midnight(through + timedelta(days=1))
    if since is not None:
        window &= pl.col("ts") >= _midnight(since)
    return events.filter(chosen, window).select("user_id", pl.col("ts").dt.date().alias("day")).unique()


def _rolling_distinct(active: pl.DataFrame, width: int, *, through: date) -> pl.DataFrame:
    """`day, users`: distinct users active in the `width` days ending on each day, up to `through`.

    Counted without expanding users into days: a user active on day `a` counts for the windows ending on days
    `a` to `a + width - 1`. Consecutive active days of one user cover overlapping ranges, so each adds only
    the days the one before did not (its range starts at the later of `a` and `previous + width`); the
    user's ranges are then disjoint, and a day's count is the number of ranges holding it, summed from the
    +1 where each starts and the -1 where it stops.
    """
    span = timedelta(days=width)
    previous = pl.col("day").shift().over("user_id", order_by="day")
    ranges = active.select(
        pl.max_horizontal("day", previous + span).alias("start"), (pl.col("day") + span).alias("stop")
    ).filter(pl.col("start") < pl.col("stop"))
    steps = pl.concat(
        [ranges.select(pl.col("start").alias("day"), pl.lit(1).alias("step")),
         ranges.select(pl.col("stop").alias("day"), pl.lit(-1).alias("step"))]
    ).group_by("day").agg(pl.col("step").sum())  # fmt: skip
    if steps.is_empty():
        return pl.DataFrame(schema={"day": pl.Date, "users": pl.Int64})
    calendar = pl.DataFrame({"day": pl.date_range(steps.get_column("day").min(), through, eager=True)})
    return (
        calendar.join(steps, on="day", how="left")
        .sort("day")
        .select("day", pl.col("step").fill_null(0).cum_sum().cast(pl.Int64).alias("users"))
    )


def _activity(event: str | None) -> str:
    return f"`{event}`" if event else "any event but provider feedback"


def _last_complete_day(as_of: datetime) -> date:
    """The last UTC day wholly before `as_of`: the day before as_of's own, which has begun but not ended (or, at
    midnight sharp, has not begun)."""
    return as_of.astimezone(UTC).date() - timedelta(days=1)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), UTC)


def markdown_table(header: list[str], rows: list[list[str]], *, numeric_from: int) -> list[str]:
    """The lines of a markdown table whose columns from index `numeric_from` on hold numbers (right-aligned)."""
    align = "|" + "---|" * numeric_from + "---:|" * (len(header) - numeric_from)
    return [_row(header), align, *(_row(row) for row in rows), ""]


def cell(count: int | None) -> str:
    """A count with thousands separators; n/a when unknown."""
    return "n/a" if count is None else f"{count:,}"


def percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.1%}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
