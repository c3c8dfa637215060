"""The steps of one engine run as plain functions: what the Prefect tasks call, and what tests call directly.

Each step reads what it needs from the stores and the database, so steps can run in separate tasks (or
processes) without passing frames between them; a dry run computes everything and writes nothing.
"""

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
from sqlalchemy import Engine

from engine.allocation import thompson_shares
from engine.behaviour import Behaviour
from engine.channels.registry import channels
from engine.channels.senders import Senders
from engine.db import upsert
from engine.definition_checks import absent_attribute_columns, check_against_snapshot
from engine.definitions import Definitions
from engine.delivery_controls import apply_controls
from engine.dispatch import DispatchCounts, Pace, dispatch_channel
from engine.dispatch_policy import Clock, DispatchSettings
from engine.experiments import ExperimentReport, report_experiments
from engine.feature_state import FeatureStateStore
from engine.feedback.suppressions import suppressed
from engine.ingest import ingest_events, load_users, scan_events
from engine.journey_state import Advance
from engine.journey_store import load_active, load_decided, load_known, load_send_history, save_step
from engine.journeys import SEND_SCHEMA, run_journey, runs_live
from engine.outbox import plan_outbox, skip_suppressed
from engine.python_segments import compute_python_memberships, dry_run
from engine.render import TemplateStore
from engine.rollups import arrival_fingerprints, scan_rollups, update_rollups
from engine.segments import MembershipStore, SegmentChange, compute_memberships_with_state, diff_memberships
from engine.settings import EngineSettings
from models.journeys import JourneyDefinition, SegmentEntry
from models.tables import SegmentSize

_SEGMENT_SIZES = SegmentSize.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RunContext:
    run_id: str
    as_of: datetime
    dry_run: bool
    settings: EngineSettings


@dataclass(frozen=True)
class IngestSummary:
    fingerprint: str
    files_ingested: int
    files_unchanged: int
    rows_loaded: int
    rows_quarantined: int
    quarantined_by_reason: dict[str, int]
    rollup_partitions_rebuilt: int
    users: int


@dataclass(frozen=True)
class SegmentSummary:
    name: str
    size: int
    entered: int
    exited: int


@dataclass
class JourneySummary:
    name: str
    entered: int = 0
    transitions: int = 0
    exits: dict[str, int] = field(default_factory=dict)
    at_node: dict[str, int] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)  # "email:planned", "push:skipped:no_consent", ...


def behaviour_at(settings: EngineSettings, as_of: datetime) -> Behaviour:
    return Behaviour(
        as_of=as_of,
        events=scan_events(settings.store_dir, as_of=as_of),
        rollups=scan_rollups(settings.store_dir, through_day=as_of.date()),
    )


def users_at(settings: EngineSettings, as_of: datetime, definitions: Definitions) -> pl.LazyFrame:
    """The users snapshot, plus null columns for attributes the rules read that it lacks (warned about)."""
    return _with_absent_attributes(load_users(settings.snapshot, as_of=as_of).users.lazy(), definitions)


def _with_absent_attributes(users: pl.LazyFrame, definitions: Definitions) -> pl.LazyFrame:
    return users.with_columns(absent_attribute_columns(definitions.rule_sites, users.collect_schema()))


def check_definitions(ctx: RunContext, definitions: Definitions) -> list[str]:
    """Check the definitions against this run's snapshot before anything is computed; returns warnings."""
    raw = load_users(ctx.settings.snapshot, as_of=ctx.as_of).users  # loaded once: 2 s at a million users
    events = set(scan_events(ctx.settings.store_dir, as_of=ctx.as_of).select("event").unique().collect().to_series())
    warnings, _ = check_against_snapshot(definitions.rule_sites, users_schema=raw.schema, events=events)
    dry_run(definitions.python_segments, _with_absent_attributes(raw.lazy(), definitions).collect_schema())
    return warnings


def ingest(ctx: RunContext) -> IngestSummary:
    """Validate and normalize new raw files, then fold new arrivals into rollups."""
    settings = ctx.settings
    report = ingest_events(settings.snapshot, store_dir=settings.store_dir, through=ctx.as_of.date())
    rebuilt = update_rollups(settings.store_dir)
    users = load_users(settings.snapshot, as_of=ctx.as_of)
    return IngestSummary(
        fingerprint=report.fingerprint,
        files_ingested=report.files_ingested,
        files_unchanged=report.files_unchanged,
        rows_loaded=report.rows_loaded,
        rows_quarantined=report.rows_quarantined,
        quarantined_by_reason=dict(report.quarantined_by_reason),
        rollup_partitions_rebuilt=len(rebuilt),
        users=users.users.height,
    )


def recompute_segments(ctx: RunContext, definitions: Definitions, database: Engine) -> dict[str, SegmentChange]:
    """Every segment's members at as_of and the change since the previous run; stored unless dry."""
    settings = ctx.settings
    store = MembershipStore(settings.store_dir / "segments")
    users = users_at(settings, ctx.as_of, definitions)
    behaviour = behaviour_at(settings, ctx.as_of)
    memberships = compute_python_memberships(definitions.python_segments, users, behaviour)
    memberships |= _rule_memberships(ctx, definitions, users, behaviour)
    changes = diff_memberships(memberships, store, ctx.as_of)
    if not ctx.dry_run:
        for name, change in changes.items():
            store.write(name, ctx.as_of, change.members)
        with database.begin() as conn:
            upsert(conn, _SEGMENT_SIZES, [_size_row(ctx, definitions, change) for change in changes.values()])
    return changes


def _rule_memberships(
    ctx: RunContext, definitions: Definitions, users: pl.LazyFrame, behaviour: Behaviour
) -> dict[str, pl.Series]:
    """The YAML segments, advanced from the feature state of the previous run when it is usable (the same
    memberships as a full recompute, for the cost of the day that arrived); a dry run leaves the state alone."""
    state = FeatureStateStore(ctx.settings.store_dir / "feature_state")
    arrivals = arrival_fingerprints(ctx.settings.store_dir, through_day=ctx.as_of.date())
    memberships, _ = compute_memberships_with_state(
        definitions.segments, users, behaviour, state, arrivals=arrivals, persist=not ctx.dry_run
    )
    return memberships


def summarize_segments(changes: dict[str, SegmentChange]) -> list[SegmentSummary]:
    return [
        SegmentSummary(name, change.members.len(), change.entered.len(), change.exited.len())
        for name, change in sorted(changes.items())
    ]


def advance_journeys(
    ctx: RunContext, definitions: Definitions, database: Engine, changes: dict[str, SegmentChange]
) -> list[JourneySummary]:
    """Enter and advance every active journey, then plan all their messages under the delivery controls.

    Messages are planned together because the controls look across journeys (priority, caps); each journey's
    step is then written in its own transaction, with its outbox rows. Adaptive send experiments get this run's
    shares first, drawn once and stored (`engine.allocation`).
    """
    settings = ctx.settings
    users = users_at(settings, ctx.as_of, definitions)
    behaviour = behaviour_at(settings, ctx.as_of)
    memberships = {name: change.members for name, change in changes.items()}
    live = {name: journey for name, journey in sorted(definitions.journeys.items()) if runs_live(journey)}
    shares = {
        name: thompson_shares(
            database, journey, events=behaviour.events, as_of=ctx.as_of, run_id=ctx.run_id, store=not ctx.dry_run
        )
        for name, journey in live.items()
    }
    steps = {}
    with database.connect() as conn:
        for name, journey in live.items():
            steps[name] = run_journey(
                journey,
                definitions.journey_version(name),
                entered=_segment_entries(journey, changes),
                known=load_known(conn, name),
                active=load_active(conn, name),
                users=users,
                behaviour=behaviour,
                memberships=memberships,
                thompson=shares[name],
            )
    return record_journey_steps(ctx, definitions, database, users, steps)


def record_journey_steps(
    ctx: RunContext,
    definitions: Definitions,
    database: Engine,
    users: pl.LazyFrame,
    steps: dict[str, tuple[pl.DataFrame, Advance]],
) -> list[JourneySummary]:
    """Plan the journeys' messages together under suppressions and delivery controls, then write each journey's
    step with its outbox rows in one transaction; however the steps were computed (in one process or sharded)."""
    with database.connect() as conn:
        sends = pl.concat([result.sends for _, result in steps.values()]) if steps else pl.DataFrame(schema=SEND_SCHEMA)
        outbox = plan_outbox(sends, users, run_id=ctx.run_id, as_of=ctx.as_of)
        for name, spec in channels().items():
            addresses = outbox.filter(pl.col("channel") == name).get_column("recipient").drop_nulls().to_list()
            outbox = skip_suppressed(outbox, name, suppressed(conn, name, addresses), spec.suppression_reason)
        history = load_send_history(conn, as_of=ctx.as_of)
        priorities = {name: journey.priority for name, journey in definitions.journeys.items()}
        decided = load_decided(conn, as_of=ctx.as_of, priorities=priorities)
    outbox = apply_controls(
        outbox, users=users, history=history, policy=definitions.delivery, as_of=ctx.as_of, decided=decided
    )
    summaries = []
    for name, (new, result) in steps.items():
        rows = outbox.filter(pl.col("journey") == name)
        if not ctx.dry_run:
            with database.begin() as conn:
                save_step(conn, result=result, outbox=rows, run_id=ctx.run_id)
        summaries.append(_journey_summary(name, new, result.instances, result.transitions, rows))
    return summaries


def _segment_entries(journey: JourneyDefinition, changes: dict[str, SegmentChange]) -> pl.Series | None:
    """Who entered a segment-entry journey's segment at this run; other entry kinds read events or members."""
    return changes[journey.entry.segment].entered if isinstance(journey.entry, SegmentEntry) else None


def dispatch(
    ctx: RunContext,
    database: Engine,
    templates: TemplateStore,
    senders: Senders,
    *,
    settings: DispatchSettings,
    clock: Clock,
    pacers: Mapping[str, Pace] | None = None,
) -> dict[str, DispatchCounts]:
    """Send what is sendable in the outbox, channel by channel in the order of `senders` (email, push, then
    plugins). Dry runs never get here: they build no senders.

    A channel stopped by a configuration error does not stop the others; the caller decides how loudly to fail
    (`engine.dispatch.raise_for_configuration`). `pacers` maps a channel to its pace before each wave.
    """
    users = load_users(ctx.settings.snapshot, as_of=ctx.as_of).users.lazy()
    behaviour = behaviour_at(ctx.settings, ctx.as_of)
    return {
        channel: dispatch_channel(
            database,
            channel=channel,
            run_id=ctx.run_id,
            behaviour=behaviour,
            users=users,
            templates=templates,
            sender=senders[channel],
            policy=settings.policy(channel, clock),
            pace=(pacers or {}).get(channel),
        )
        for channel in senders
    }


def _size_row(ctx: RunContext, definitions: Definitions, change: SegmentChange) -> dict[str, object]:
    return {
        "segment": change.name,
        "as_of": ctx.as_of,
        "run_id": ctx.run_id,
        "definition_version": definitions.segment_version(change.name)[:16],
        "size": change.members.len(),
        "entered": change.entered.len(),
        "exited": change.exited.len(),
    }


def _journey_summary(
    name: str, new: pl.DataFrame, instances: pl.DataFrame, transitions: pl.DataFrame, outbox: pl.DataFrame
) -> JourneySummary:
    exited = instances.filter(pl.col("status") == "exited")
    waiting = instances.filter(pl.col("status") == "active")
    messages = Counter(
        f"{channel}:{status}" + (f":{reason}" if reason else "")
        for channel, status, reason in outbox.select("channel", "status", "reason").iter_rows()
    )
    held = outbox.filter(pl.col("not_before").is_not_null()).get_column("channel").to_list()
    messages.update(f"{channel}:held" for channel in held)  # planned, and waiting for the user's morning
    return JourneySummary(
        name=name,
        entered=new.height,
        transitions=transitions.height,
        exits=dict(Counter(exited.get_column("exit_reason").to_list())),
        at_node=dict(Counter(waiting.get_column("node").to_list())),
        messages=dict(sorted(messages.items())),
    )


def experiment_reports(ctx: RunContext, definitions: Definitions, database: Engine) -> list[ExperimentReport]:
    """Every journey experiment analyzed as of this run, from the assignments runs recorded (see
    `engine.experiments`): the same figures whenever they are asked for, for the same as_of."""
    return report_experiments(
        database,
        list(definitions.journeys.values()),
        events=behaviour_at(ctx.settings, ctx.as_of).events,
        as_of=ctx.as_of,
    )
