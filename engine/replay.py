"""Dry-run replay: which as_ofs a shadow workspace computes, what it writes for each day, how it compares with live.

State before `start`. A day's journeys depend on every earlier run (who is waiting where, what was sent, which
baseline the segment churn is taken against), so the shadow does not start at `start`: it replays the live run
history, every as_of at which a live run wrote state up to `end`, merged with the requested days, in order,
from an empty workspace. With unchanged definitions and inputs it therefore reproduces the live runs' plans
exactly; with edited ones it shows what they would have done had they been live all along. Days before the
first live run are not invented: a replay with no live history starts empty at `start`, as a first live run
would. The cost is one engine run per live run before `start` (about a second each for thousands of users);
a workspace that already holds those as_ofs over the same inputs and definitions is reused (see
`engine.workspace`), so a second replay of nearby days costs only the days it adds.

Outputs, per requested as_of, in `days/<as_of>/`: `segments.parquet` (segment, user_id), `segment_sizes.parquet`,
`transitions.parquet` (the journey steps the day took) and `messages.parquet` (every outbox row the day planned,
sent or skipped with its reason), sorted, without run ids or dispatch bookkeeping. They are a function of the
snapshot, the definitions and the as_of sequence only, so replaying the same days gives byte-identical files.
Feedback the live database received from providers (suppressions, engagement facts) is not in the snapshot and
not seen by the shadow.
"""

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl
from sqlalchemy import Boolean, Column, Engine, Float, Integer, String, Table, select
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeDecorator

from engine.channels.registry import channels
from engine.db import connect
from engine.run_log import LiveRun
from engine.segments import MembershipStore
from engine.settings import EngineSettings
from engine.workspace import (
    ComputedDay,
    Workspace,
    definitions_hash,
    input_fingerprints,
    load_state,
    reset,
    reusable_days,
)
from models.tables import JourneyTransition, OutboxMessage, SegmentSize
from models.utc import UTCDateTime

_SIZES: Table = SegmentSize.__table__  # type: ignore[attr-defined]
_TRANSITIONS: Table = JourneyTransition.__table__  # type: ignore[attr-defined]
_OUTBOX: Table = OutboxMessage.__table__  # type: ignore[attr-defined]
# What a plan is; the rest of an outbox row (run ids, attempts, provider ids, claims) is dispatch bookkeeping.
MESSAGE_COLUMNS = (
    "send_key", "as_of", "journey", "journey_version", "node", "instance_id", "user_id", "channel", "template",
    "transactional", "recipient", "status", "reason", "not_before",
)  # fmt: skip
OUTPUTS = ("segments", "segment_sizes", "transitions", "messages")
_PLAIN = ((Boolean, pl.Boolean()), (Integer, pl.Int64()), (Float, pl.Float64()), (String, pl.String()))


@dataclass(frozen=True)
class ReplayPlan:
    workspace: Workspace
    requested: tuple[datetime, ...]
    sequence: tuple[ComputedDay, ...]  # every as_of the workspace holds once the replay is done, in order
    todo: tuple[ComputedDay, ...]  # the tail of `sequence` still to compute
    live: tuple[datetime, ...]  # as_ofs of completed live runs, to compare with


@dataclass(frozen=True)
class Comparison:
    as_of: datetime
    item: str  # "segment <name>", "<channel> messages" (every row planned), "<channel> to send" (not skipped)
    live: int | None  # None: no completed live run at this as_of
    replay: int


@dataclass(frozen=True)
class ReplayReport:
    workspace: str
    root: Path
    requested: tuple[datetime, ...]
    history: tuple[datetime, ...]  # as_ofs replayed before the first requested one
    computed: int  # as_ofs computed by this replay
    reused: int  # as_ofs the workspace already held, computed by an earlier replay over the same inputs
    outputs: dict[datetime, Path]
    comparisons: tuple[Comparison, ...]

    def differences(self) -> list[Comparison]:
        """Items where a live run exists and disagrees with the replay."""
        return [c for c in self.comparisons if c.live is not None and c.live != c.replay]

    def table(self) -> list[dict[str, object]]:
        return [
            {
                "as_of": c.as_of.isoformat(),
                "item": c.item,
                "live": "-" if c.live is None else c.live,
                "replay": c.replay,
                "difference": "-" if c.live is None else c.replay - c.live,
            }
            for c in self.comparisons
        ]

    def markdown(self) -> str:
        first = self.requested[0].isoformat()
        last = self.requested[-1].isoformat()
        lines = [
            f"# Replay {first} .. {last} (dry run, workspace `{self.workspace}`)",
            "",
            f"Nothing live was written and nothing was sent. Outputs: `{self.root}/days/<as_of>/`.",
            f"History replayed before the first day: {len(self.history)} live as_of(s)"
            + (f", from {self.history[0].isoformat()}." if self.history else "."),
            f"Computed now: {self.computed} as_of(s); reused from the workspace: {self.reused}.",
            "",
            "| as_of | item | live | replay | difference |",
            "|---|---|---:|---:|---:|",
            *(
                f"| {r['as_of']} | {r['item']} | {r['live']} | {r['replay']} | {r['difference']} |"
                for r in self.table()
            ),
        ]
        if all(c.live is None for c in self.comparisons):
            verdict = "No live run at these as_ofs to compare with."
        elif differences := self.differences():
            verdict = f"{len(differences)} item(s) differ from the live runs."
        else:
            verdict = "Every day a live run served is the same as live."
        lines += ["", verdict]
        return "\n".join(lines) + "\n"


def daily_as_ofs(start: date, end: date, at: time) -> list[datetime]:
    """One as_of per day from start to end inclusive, at the time of day `at` in UTC."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    moment = at.replace(tzinfo=None)
    return [datetime.combine(start + timedelta(days=i), moment, UTC) for i in range((end - start).days + 1)]


def replay_sequence(requested: Sequence[datetime], live: Iterable[datetime]) -> list[datetime]:
    """The requested as_ofs merged with every live as_of up to the last of them, in order."""
    return sorted(set(requested) | {as_of for as_of in live if as_of <= max(requested)})


def shadow_run_id(as_of: datetime) -> str:
    """The shadow's run id for an as_of: the same in every replay, so its rows can be found again."""
    return f"replay-{_stamp(as_of)}"


def plan_replay(
    workspace: Workspace,
    versions: dict[str, str],
    requested: Sequence[datetime],
    runs: Sequence[LiveRun],
    *,
    fresh: bool,
) -> ReplayPlan:
    """Decide what the replay computes, emptying the workspace when what it holds cannot be continued."""
    order = replay_sequence(requested, (run.as_of for run in runs))
    prints = input_fingerprints(workspace.settings.snapshot, {as_of.date() for as_of in order})
    sequence = tuple(ComputedDay(as_of, prints[as_of.date()]) for as_of in order)
    definitions = definitions_hash(versions)
    keep = 0 if fresh else reusable_days(load_state(workspace), definitions, sequence)
    if keep == 0:
        reset(workspace, definitions)
    completed = tuple(sorted({run.as_of for run in runs if run.status == "completed"}))
    return ReplayPlan(workspace, tuple(requested), sequence, sequence[keep:], completed)


def replay_report(plan: ReplayPlan, live: EngineSettings) -> ReplayReport:
    """Write the outputs of every requested day and compare each with the live run of the same as_of."""
    shadow = connect(plan.workspace.settings.database)
    live_database = existing_database(live)
    outputs: dict[datetime, Path] = {}
    comparisons: list[Comparison] = []
    for as_of in plan.requested:
        outputs[as_of] = write_day_outputs(plan.workspace, as_of)
        theirs = day_counts(live_database, as_of) if live_database is not None and as_of in plan.live else None
        comparisons += compare(as_of, theirs, day_counts(shadow, as_of))
    first = plan.requested[0]
    return ReplayReport(
        workspace=plan.workspace.name,
        root=plan.workspace.root,
        requested=plan.requested,
        history=tuple(day.as_of for day in plan.sequence if day.as_of < first),
        computed=len(plan.todo),
        reused=len(plan.sequence) - len(plan.todo),
        outputs=outputs,
        comparisons=tuple(comparisons),
    )


def write_day_outputs(workspace: Workspace, as_of: datetime) -> Path:
    """The day's segments, sizes, journey steps and planned messages as sorted Parquet files; returns the folder."""
    settings = workspace.settings
    database = connect(settings.database)
    frames = {
        "segments": memberships_at(MembershipStore(settings.store_dir / "segments"), as_of),
        "segment_sizes": _rows(database, _SIZES, _SIZES.c.as_of == as_of, ("segment",), drop=("run_id",)),
        "transitions": _rows(
            database,
            _TRANSITIONS,
            _TRANSITIONS.c.run_id == shadow_run_id(as_of),
            ("journey", "instance_id", "step"),
            drop=("run_id",),
        ),
        "messages": _rows(database, _OUTBOX, _OUTBOX.c.as_of == as_of, ("send_key",), keep=MESSAGE_COLUMNS),
    }
    folder = workspace.days_dir / _stamp(as_of)
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        tmp = folder / f".{name}.parquet.tmp"
        frame.write_parquet(tmp)
        tmp.replace(folder / f"{name}.parquet")
    return folder


def memberships_at(store: MembershipStore, as_of: datetime) -> pl.DataFrame:
    """Every segment's members at as_of, one row per (segment, user_id), sorted."""
    frames = [
        members.to_frame("user_id").select(pl.lit(folder.name).alias("segment"), "user_id")
        for folder in sorted(store.root.iterdir() if store.root.exists() else [])
        if folder.is_dir() and (members := store.read(folder.name, as_of)) is not None
    ]
    schema = {"segment": pl.String, "user_id": pl.String}
    return pl.concat(frames).sort("segment", "user_id") if frames else pl.DataFrame(schema=schema)


def day_counts(database: Engine, as_of: datetime) -> dict[str, int]:
    """Segment sizes and message counts of the run at as_of, as recorded in a database."""
    with database.connect() as conn:
        sizes = conn.execute(select(_SIZES.c.segment, _SIZES.c.size).where(_SIZES.c.as_of == as_of)).all()
        messages = conn.execute(select(_OUTBOX.c.channel, _OUTBOX.c.status).where(_OUTBOX.c.as_of == as_of)).all()
    counts = Counter({f"segment {name}": size for name, size in sizes})
    for channel, status in messages:
        counts[f"{channel} messages"] += 1
        counts[f"{channel} to send"] += status != "skipped"
    return dict(counts)


def compare(as_of: datetime, live: dict[str, int] | None, replay: dict[str, int]) -> list[Comparison]:
    items = sorted(set(replay) | set(live or {}) | {f"{c} {k}" for c in channels() for k in ("messages", "to send")})
    return [Comparison(as_of, item, None if live is None else live.get(item, 0), replay.get(item, 0)) for item in items]


def segment_sizes(database: Engine, as_of: datetime) -> dict[str, int]:
    """The recorded size of every segment at as_of (empty when no run recorded that as_of)."""
    with database.connect() as conn:
        rows = conn.execute(select(_SIZES.c.segment, _SIZES.c.size).where(_SIZES.c.as_of == as_of)).all()
    return dict(sorted((name, size) for name, size in rows))


def _rows(
    database: Engine,
    table: Table,
    where: ColumnElement[bool],
    order: Sequence[str],
    *,
    keep: Sequence[str] | None = None,
    drop: Sequence[str] = (),
) -> pl.DataFrame:
    columns = [c for c in table.columns if (keep is None or c.name in keep) and c.name not in drop]
    with database.connect() as conn:
        rows = conn.execute(select(*columns).where(where).order_by(*(table.c[name] for name in order))).all()
    schema = {c.name: _dtype(c) for c in columns}
    return pl.DataFrame([tuple(row) for row in rows], schema=schema, orient="row")


def _dtype(column: Column) -> pl.DataType:  # type: ignore[type-arg]
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return pl.Datetime("us", "UTC")
    if isinstance(kind, TypeDecorator):  # SQLModel's AutoString
        kind = kind.impl_instance
    for sql, polars in _PLAIN:
        if isinstance(kind, sql):
            return polars
    raise TypeError(f"{column}: no Polars type for {kind!r}")


def existing_database(settings: EngineSettings) -> Engine | None:
    """The live database if there is one; a replay must not create a live SQLite file just to find it empty."""
    if settings.database_url is None and not (settings.home / "nudge.db").exists():
        return None
    return connect(settings.database)


def _stamp(as_of: datetime) -> str:
    return as_of.astimezone(UTC).strftime("%Y-%m-%dT%H%M%SZ")
