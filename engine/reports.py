"""The activity report over a range of days, from the run history: what each day's live run did.

It reads only what runs recorded (the Run table's counts and the segment size history), so a report over past
days costs no recomputation and says exactly what happened then, not what a rerun would do today.
"""

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import Engine, select

from models.tables import Run, SegmentSize

_RUNS = Run.__table__  # type: ignore[attr-defined]
_SIZES = SegmentSize.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class DayActivity:
    as_of: datetime
    messages: dict[str, int]  # "email_sent", "push_skipped", ... as RunSummary.messages() records them
    segments: dict[str, int]  # segment -> size at this as_of


@dataclass(frozen=True)
class ActivityReport:
    start: date
    end: date
    days: tuple[DayActivity, ...]

    def markdown(self) -> str:
        """One table of messages per day and one of segment sizes per day: the week at a glance."""
        kinds = sorted({kind for day in self.days for kind in day.messages})
        segments = sorted({name for day in self.days for name in day.segments})
        lines = [f"# Activity {self.start} to {self.end}", "", f"{len(self.days)} completed live runs.", ""]
        if not self.days:
            return "\n".join(lines)
        lines += _table("Messages", kinds, [(day.as_of, day.messages) for day in self.days])
        lines += _table("Segment sizes", segments, [(day.as_of, day.segments) for day in self.days])
        return "\n".join(lines)


def activity_report(database: Engine, *, start: date, end: date) -> ActivityReport:
    """The completed live runs with an as_of on a day from `start` to `end` (UTC), in as_of order."""
    since = datetime.combine(start, time(), UTC)
    until = datetime.combine(end + timedelta(days=1), time(), UTC)
    runs = (
        select(_RUNS.c.as_of, _RUNS.c.counts)
        .where(_RUNS.c.dry_run.is_(False), _RUNS.c.status == "completed")
        .where(_RUNS.c.as_of >= since, _RUNS.c.as_of < until)
        .order_by(_RUNS.c.as_of, _RUNS.c.run_id)
    )
    sizes = select(_SIZES.c.as_of, _SIZES.c.segment, _SIZES.c.size).where(
        _SIZES.c.as_of >= since, _SIZES.c.as_of < until
    )
    with database.connect() as conn:
        recorded = conn.execute(runs).all()
        by_as_of: dict[datetime, dict[str, int]] = {}
        for as_of, segment, size in conn.execute(sizes).all():
            by_as_of.setdefault(as_of, {})[segment] = size
    days = tuple(
        DayActivity(as_of, json.loads(counts).get("messages", {}), dict(sorted(by_as_of.get(as_of, {}).items())))
        for as_of, counts in recorded
    )
    return ActivityReport(start, end, days)


def _table(title: str, columns: list[str], rows: list[tuple[datetime, dict[str, int]]]) -> list[str]:
    return [
        f"## {title}",
        "",
        "| as_of | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
        *(f"| {as_of:%Y-%m-%d %H:%M} | " + " | ".join(f"{values.get(c, 0):,}" for c in columns) + " |"
          for as_of, values in rows),
        "",
    ]  # fmt: skip
