"""What-if simulation of a journey (a draft, or any) over historical snapshots, touching no live state.

`simulate` runs one journey day by day over `start .. end` as the live pipeline would (`run_journey`, then
`plan_outbox` and `apply_controls`), but in a throwaway engine home: the live snapshot's raw files are ingested
into a temporary store (segment memberships and their day-to-day changes included) with a temporary SQLite
database beside it, journey state is kept in memory, and nothing is written to the live home, the live database
or any provider: no senders are built. The temporary home is deleted when the simulation ends.

What it does not see: the live runs' state (the simulated journey starts empty at `start`, so on the first day a
segment entry enters the whole segment, as a first live run would), other journeys' messages (delivery controls
count only the simulated journey's own), and provider feedback (suppressions, engagement) the live database holds.
The journey's status is ignored: a draft is simulated like an active journey.

The report is a function of the snapshot, the definitions and the days only: two simulations of the same
journey over the same days give equal reports.
"""

import hashlib
import tempfile
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path

import polars as pl

from engine.db import connect
from engine.definitions import Definitions, load_definitions
from engine.delivery_controls import apply_controls
from engine.journeys import INSTANCE_SCHEMA, KNOWN_SCHEMA, TRANSITION_SCHEMA, run_journey
from engine.outbox import plan_outbox
from engine.pipeline import RunContext, behaviour_at, ingest, recompute_segments, users_at
from engine.render import TemplateStore
from engine.replay import daily_as_ofs
from engine.settings import EngineSettings
from models.journeys import JourneyDefinition, SegmentEntry

MESSAGE_COLUMNS = (
    "as_of",
    "send_key",
    "instance_id",
    "user_id",
    "node",
    "channel",
    "template",
    "recipient",
    "transactional",
    "status",
    "reason",
    "not_before",
)
"""The columns of the planned messages in a report: what would have been sent, or skipped and why."""
HISTORY_COLUMNS = ("user_id", "channel", "journey", "instance_id", "node", "as_of", "not_before")
COUNTED = ("planned",)
"""Outbox statuses that count against later days' caps within a simulation (nothing is ever sent)."""


@dataclass(frozen=True, eq=False)
class SimulationReport:
    """What a journey would have done over `as_ofs`.

    `node_counts` has one row per run, node and status (`as_of, node, status, instances`): where the journey's
    instances were after each run. `messages_per_channel` counts the messages that would have gone out (status
    `planned` after the delivery controls); `messages` lists every planned outbox row, sent or skipped, with its
    reason. `goal_conversions` counts instances that exited by reaching the goal.
    """

    journey: str
    version: str
    as_ofs: tuple[datetime, ...]
    entries: int
    entries_per_day: dict[date, int]
    node_counts: pl.DataFrame
    messages_per_channel: dict[str, int]
    goal_conversions: int
    messages: pl.DataFrame
    transitions: pl.DataFrame

    def markdown(self) -> str:
        """The report for a person: totals first, then one line per simulated day."""
        first, last = self.as_ofs[0].date(), self.as_ofs[-1].date()
        channels = ", ".join(f"{n:,} {channel}" for channel, n in sorted(self.messages_per_channel.items()))
        lines = [
            f"# Simulation of {self.journey} ({first} to {last})",
            "",
            f"Version `{self.version[:12]}`, {len(self.as_ofs)} daily runs, nothing live touched or sent.",
            "",
            f"- Entries: {self.entries:,}",
            f"- Goal conversions: {self.goal_conversions:,}",
            f"- Messages that would have gone out: {channels or 'none'}",
            "",
            "| day | entered | where instances were after the run |",
            "|---|---:|---|",
        ]
        for day, entered in self.entries_per_day.items():
            counts = self.node_counts.filter(pl.col("as_of").dt.date() == day) if self.node_counts.width else None
            rows = counts.select("node", "status", "instances").iter_rows() if counts is not None else ()
            where = ", ".join(f"{node}/{status}: {n:,}" for node, status, n in rows)
            lines.append(f"| {day} | {entered:,} | {where} |")
        return "\n".join(lines) + "\n"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SimulationReport):
            return NotImplemented
        plain = ("journey", "version", "as_ofs", "entries", "entries_per_day", "messages_per_channel")
        frames = ("node_counts", "messages", "transitions")
        return (
            all(getattr(self, name) == getattr(other, name) for name in plain)
            and self.goal_conversions == other.goal_conversions
            and all(getattr(self, name).equals(getattr(other, name)) for name in frames)
        )

    __hash__ = None  # type: ignore[assignment]


def simulate(
    journey: str | JourneyDefinition,
    start: date,
    end: date,
    *,
    settings: EngineSettings,
    at: time = time(6),
    definitions: Definitions | None = None,
) -> SimulationReport:
    """Run `journey` once a day at `at` (UTC) from `start` through `end` over the live snapshot, in isolation.

    Args:
        journey: a journey name in the definitions, or a definition (an edited copy need not be saved).
        start: the first day simulated.
        end: the last day simulated (inclusive).
        settings: the live settings: their snapshot and definitions are read, nothing of theirs is written.
        at: the time of day (UTC) of each simulated run.
        definitions: the definitions (segments the journey reads, the delivery policy); loaded from
            `settings` when omitted.
    """
    if end < start:
        raise ValueError(f"end ({end}) is before start ({start})")
    definitions = definitions or load_definitions(settings.definitions_dir, TemplateStore(settings.templates_dir))
    definition, version = _resolve(journey, definitions)
    as_ofs = daily_as_ofs(start, end, at)
    with tempfile.TemporaryDirectory(prefix="nudge-simulate-") as folder:
        shadow = _shadow_settings(settings, Path(folder))
        return _run(definition, version, as_ofs, shadow, definitions)


def _run(
    journey: JourneyDefinition,
    version: str,
    as_ofs: list[datetime],
    shadow: EngineSettings,
    definitions: Definitions,
) -> SimulationReport:
    database = connect(shadow.database)
    try:
        state = pl.DataFrame(schema=INSTANCE_SCHEMA)
        transitions = [pl.DataFrame(schema=TRANSITION_SCHEMA)]
        messages: list[pl.DataFrame] = []
        counts = []
        entries: dict[date, int] = {}
        for as_of in as_ofs:
            ctx = RunContext(run_id=f"simulate-{as_of:%Y%m%dT%H%M}", as_of=as_of, dry_run=False, settings=shadow)
            ingest(ctx)
            changes = recompute_segments(ctx, definitions, database)
            users = users_at(shadow, as_of, definitions)
            entered = changes[journey.entry.segment].entered if isinstance(journey.entry, SegmentEntry) else None
            new, result = run_journey(
                journey,
                version,
                entered=entered,
                known=state.select(KNOWN_SCHEMA.names()),
                active=state.filter(pl.col("status") == "active"),
                users=users,
                behaviour=behaviour_at(shadow, as_of),
                memberships={name: change.members for name, change in changes.items()},
            )
            outbox = plan_outbox(result.sends, users, run_id=ctx.run_id, as_of=as_of)
            history = _history(messages, as_of)
            outbox = apply_controls(outbox, users=users, history=history, policy=definitions.delivery, as_of=as_of)
            state = pl.concat(
                [state.join(result.instances.select("instance_id"), on="instance_id", how="anti"), result.instances]
            ).sort("instance_id")
            transitions.append(result.transitions)
            messages.append(outbox.with_columns(pl.col("as_of").cast(pl.Datetime("us", "UTC"))))
            entries[as_of.date()] = new.height
            counts.append(_node_counts(state, as_of))
    finally:
        database.dispose()
    return _report(journey, version, as_ofs, state, transitions, messages, counts, entries)


def _report(
    journey: JourneyDefinition,
    version: str,
    as_ofs: list[datetime],
    state: pl.DataFrame,
    transitions: list[pl.DataFrame],
    messages: list[pl.DataFrame],
    counts: list[pl.DataFrame],
    entries: dict[date, int],
) -> SimulationReport:
    planned = (
        pl.concat([frame.select(MESSAGE_COLUMNS) for frame in messages], how="vertical_relaxed")
        if messages
        else pl.DataFrame(schema={name: pl.String for name in MESSAGE_COLUMNS})
    ).sort("as_of", "send_key")
    sent = planned.filter(pl.col("status").is_in(COUNTED))
    per_channel = dict(sorted(sent.group_by("channel").len().iter_rows()))
    return SimulationReport(
        journey=journey.name,
        version=version,
        as_ofs=tuple(as_ofs),
        entries=sum(entries.values()),
        entries_per_day=entries,
        node_counts=pl.concat(counts).sort("as_of", "node", "status") if counts else pl.DataFrame(),
        messages_per_channel={str(channel): int(count) for channel, count in per_channel.items()},
        goal_conversions=state.filter(pl.col("exit_reason") == "goal").height,
        messages=planned,
        transitions=pl.concat(transitions).drop("version").sort("at", "instance_id", "step"),
    )


def _node_counts(state: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
    return (
        state.group_by("node", "status")
        .len("instances")
        .select(pl.lit(as_of).dt.cast_time_unit("us").alias("as_of"), "node", "status", "instances")
    )


def _history(messages: list[pl.DataFrame], as_of: datetime) -> pl.DataFrame:
    """The simulated journey's own marketing messages of the last eight days, as the caps read them."""
    moment = pl.Datetime("us", "UTC")
    schema = {name: moment if name in ("as_of", "not_before") else pl.String for name in HISTORY_COLUMNS}
    if not messages:
        frame = pl.DataFrame(schema=schema)
    else:
        frame = (
            pl.concat([m.select(HISTORY_COLUMNS) for m in messages], how="vertical_relaxed")
            .filter(
                pl.concat([m.select("status", "transactional") for m in messages], how="vertical_relaxed")
                .select(pl.col("status").is_in(COUNTED) & ~pl.col("transactional"))
                .to_series()
            )
            .filter(pl.col("as_of") >= as_of - timedelta(days=8))
            .cast(schema)  # type: ignore[arg-type]
        )
    return frame.with_columns(pl.coalesce("not_before", "as_of").alias("sent_at")).drop("not_before")


def _resolve(journey: str | JourneyDefinition, definitions: Definitions) -> tuple[JourneyDefinition, str]:
    """The definition and its version: the file's for a named journey, a content hash for an unsaved one."""
    if isinstance(journey, str):
        if journey not in definitions.journeys:
            raise KeyError(f"no journey named {journey!r} in the definitions")
        return definitions.journeys[journey], definitions.journey_version(journey)
    if definitions.journeys.get(journey.name) == journey:
        return journey, definitions.journey_version(journey.name)
    return journey, hashlib.sha256(journey.model_dump_json(by_alias=True).encode()).hexdigest()[:16]


def _shadow_settings(live: EngineSettings, home: Path) -> EngineSettings:
    """Settings of a throwaway home that reads the live snapshot and definitions and writes only under `home`."""
    return live.model_copy(update={"home": home, "snapshot_dir": live.snapshot, "database_url": None})
