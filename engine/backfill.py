"""Live backfill and rebuild: which past days may be run on live state, and how a past day is kept from sending.

A live backfill runs, in order, the days of a range that no live run completed, with the daily run's own steps
(ingest, segments, journeys) on live state, so journeys move on as if the schedule had never stopped. It only
goes forward: a missing day before the latest live run cannot be run live, since journeys have already moved
past it (running it would rewind them); it can be replayed as a dry run. Days already completed are left alone
(rerunning one would derive the same keys and write nothing new anyway).

A past day never sends. Every message such a day plans is written to the outbox as the daily run writes it and
is then, in the same step and under the outbox concurrency limit, turned into `skipped` with reason `backfill`:
the ledger accounts for it, frequency caps do not count it, and no dispatch ever takes it. "Past" is fixed once,
at the moment the backfill flow starts, and a backfill refuses as_ofs after it: the schedule runs the present.

A rebuild recomputes, for days a live run completed, the rollups (through ingestion: a corrected or late raw
file is normalized again) and every segment with its size history, overwriting what the live run recorded, so
trends and later churn reflect late data. It does not touch journeys and sends nothing.
"""

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Engine, Table, update

from engine.pipeline import JourneySummary
from engine.run_log import LiveRun
from engine.summary import RunSummary
from models.tables import OutboxMessage

_OUTBOX: Table = OutboxMessage.__table__  # type: ignore[attr-defined]
BACKFILL_REASON = "backfill"


class BackfillRefused(ValueError):
    """A live backfill that would rewind journeys or run the future; raised before anything is written."""


@dataclass(frozen=True)
class BackfillPlan:
    run: tuple[datetime, ...]  # never completed live: run now, in this order
    already_run: tuple[datetime, ...]  # completed by a live run: left as they are


@dataclass(frozen=True)
class BackfillReport:
    runs: tuple[RunSummary, ...]
    already_run: tuple[datetime, ...]

    def markdown(self) -> str:
        lines = ["# Live backfill", ""]
        if self.already_run:
            lines.append("Already run live, left as they are: " + ", ".join(a.isoformat() for a in self.already_run))
            lines.append("")
        lines += [
            "Messages these days planned were recorded as skipped (`backfill`): a past day never sends.",
            "",
            "| as_of | segments | journey steps | skipped as backfill |",
            "|---|---|---:|---:|",
        ]
        for run in self.runs:
            sizes = ", ".join(f"{s.name} {s.size:,}" for s in run.segments)
            steps = sum(j.transitions for j in run.journeys)
            skipped = sum(n for j in run.journeys for key, n in j.messages.items() if key.endswith(BACKFILL_REASON))
            lines.append(f"| {run.as_of.isoformat()} | {sizes} | {steps:,} | {skipped:,} |")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RebuiltDay:
    as_of: datetime
    before: dict[str, int]  # segment sizes as recorded before the rebuild
    after: dict[str, int]

    def changed(self) -> dict[str, tuple[int | None, int | None]]:
        names = sorted(set(self.before) | set(self.after))
        return {n: (self.before.get(n), self.after.get(n)) for n in names if self.before.get(n) != self.after.get(n)}


@dataclass(frozen=True)
class RebuildReport:
    days: tuple[RebuiltDay, ...]
    not_run: tuple[datetime, ...]  # requested days no live run completed: nothing to rebuild

    def markdown(self) -> str:
        lines = ["# Rebuild of segments and rollups", "", "Journeys were not touched and nothing was sent.", ""]
        if self.not_run:
            lines += ["Never run live, not rebuilt: " + ", ".join(a.isoformat() for a in self.not_run), ""]
        lines += ["| as_of | segment | size before | size after |", "|---|---|---:|---:|"]
        for day in self.days:
            for name, (before, after) in day.changed().items():
                lines.append(f"| {day.as_of.isoformat()} | {name} | {_cell(before)} | {_cell(after)} |")
        if not any(day.changed() for day in self.days):
            lines.append("| - | no segment size changed | | |")
        return "\n".join(lines) + "\n"


def plan_backfill(requested: Sequence[datetime], runs: Sequence[LiveRun], *, started: datetime) -> BackfillPlan:
    """Split the requested as_ofs into those to run live now and those already run; refuse what cannot be run.

    Raises:
        BackfillRefused: an as_of at or after `started`, or one never completed that lies before the latest
            live run (any status: a failed run may have moved journeys).
    """
    future = [as_of for as_of in requested if as_of >= started]
    if future:
        raise BackfillRefused(
            f"{_list(future)} not before the backfill started ({started.isoformat()}): the schedule runs the present"
        )
    completed = {run.as_of for run in runs if run.status == "completed"}
    latest = max((run.as_of for run in runs), default=None)
    todo = [as_of for as_of in requested if as_of not in completed]
    behind = [as_of for as_of in todo if latest is not None and as_of < latest]
    if behind:
        raise BackfillRefused(
            f"{_list(behind)} never ran live, but journeys have already moved on to {latest.isoformat()}; running"
            " them live would rewind journey state. Replay them as a dry run instead, or backfill from a later day."
        )
    return BackfillPlan(run=tuple(todo), already_run=tuple(a for a in requested if a in completed))


def plan_rebuild(
    requested: Sequence[datetime], runs: Sequence[LiveRun]
) -> tuple[tuple[datetime, ...], tuple[datetime, ...]]:
    """(as_ofs to rebuild: those a live run completed, as_ofs never run live and so left alone)."""
    completed = {run.as_of for run in runs if run.status == "completed"}
    return tuple(a for a in requested if a in completed), tuple(a for a in requested if a not in completed)


def skip_past_plans(database: Engine, *, as_of: datetime, started: datetime) -> dict[str, Counter[str]]:
    """Turn every still-planned outbox row of a past as_of into `skipped` / `backfill`.

    Returns, per journey, the summary keys the rows leave and join ("email:planned", "email:held" for rows that
    waited for quiet hours), as counts. Rows already sent, skipped or in flight are not touched; an as_of at or
    after `started` is not past, and nothing of it is touched.
    """
    if as_of >= started:
        return {}
    with database.begin() as conn:
        rows = conn.execute(
            update(_OUTBOX)
            .where(_OUTBOX.c.as_of == as_of, _OUTBOX.c.status == "planned")
            .values(status="skipped", reason=BACKFILL_REASON)
            .returning(_OUTBOX.c.journey, _OUTBOX.c.channel, _OUTBOX.c.not_before)
        ).all()
    moved: dict[str, Counter[str]] = {}
    for journey, channel, not_before in rows:
        counts = moved.setdefault(journey, Counter())
        counts[f"{channel}:planned"] += 1
        counts[f"{channel}:held"] += not_before is not None
    return moved


def relabel(journeys: Sequence[JourneySummary], moved: Mapping[str, Counter[str]]) -> list[JourneySummary]:
    """The journeys' message counts after `skip_past_plans`: its rows counted as skipped for `backfill`."""
    relabelled = []
    for journey in journeys:
        messages = Counter(journey.messages)
        for key, count in moved.get(journey.name, Counter()).items():
            messages[key] -= count
            channel, status = key.split(":")
            if status == "planned":
                messages[f"{channel}:skipped:{BACKFILL_REASON}"] += count
        relabelled.append(replace(journey, messages=dict(sorted((k, n) for k, n in messages.items() if n > 0))))
    return relabelled


def _list(as_ofs: Sequence[datetime]) -> str:
    return ", ".join(as_of.isoformat() for as_of in as_ofs)


def _cell(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
