"""The engine's main flow: one run for one as_of, from raw events to sent messages."""

from datetime import UTC, datetime
from uuid import uuid4

from prefect import flow
from prefect.client.schemas.objects import FlowRun, State
from prefect.concurrency.sync import concurrency
from prefect.runtime import flow_run

from engine.db import connect
from engine.dispatch import DispatchCounts
from engine.pipeline import RunContext, summarize_segments
from engine.run_log import mark_failed
from engine.settings import EngineSettings
from engine.summary import RunSummary
from tasks.run import (
    check_definitions_task,
    count_in_doubt_task,
    dispatch_task,
    ensure_outbox_limit_task,
    finish_run_task,
    ingest_task,
    journeys_task,
    load_definitions_task,
    publish_artifacts_task,
    segments_task,
    start_run_task,
)


def _record_failure(_flow: object, flow_run_: FlowRun, state: State) -> None:
    """A run that raised is marked failed in the run history, with the error, so `nudge runs` shows it."""
    mark_failed(connect(EngineSettings().database), flow_run_id=str(flow_run_.id), error=str(state.message))


@flow(name="daily-campaign", log_prints=True, on_failure=[_record_failure], on_crashed=[_record_failure])
def daily_campaign(as_of: datetime | None = None, dry_run: bool = False) -> RunSummary:
    """Ingest new events, recompute segments, advance journeys and send what they planned.

    Args:
        as_of: The instant this run treats as now, in UTC. Events before it count, journeys move up to it and
            messages are planned at it. Leave empty to use the flow run's scheduled start time. Running the
            same as_of again sends nothing twice.
        dry_run: Compute segments, journey steps and the messages they would plan, but write no state and
            send nothing.
    """
    as_of = _resolve_as_of(as_of)
    ctx = RunContext(run_id=str(flow_run.id or uuid4()), as_of=as_of, dry_run=dry_run, settings=EngineSettings())
    definitions = load_definitions_task(ctx.settings)
    if not dry_run:
        start_run_task(ctx, definitions, flow_run.id)
    ingest = ingest_task(ctx)
    warnings = check_definitions_task(ctx, definitions)
    changes = segments_task(ctx, definitions)
    journeys = journeys_task(ctx, definitions, changes)
    delivery = _dispatch(ctx)
    summary = RunSummary(
        run_id=ctx.run_id,
        as_of=as_of,
        dry_run=dry_run,
        ingest=ingest,
        segments=summarize_segments(changes),
        journeys=journeys,
        delivery=delivery,
        in_doubt=count_in_doubt_task(ctx),
        warnings=warnings,
    )
    if not dry_run:
        finish_run_task(ctx, summary)
    publish_artifacts_task(summary)
    return summary


def _resolve_as_of(as_of: datetime | None) -> datetime:
    """An explicit as_of wins; otherwise the scheduled time, so a late-starting scheduled run is still exact."""
    chosen = as_of or flow_run.scheduled_start_time or datetime.now(UTC)
    if chosen.tzinfo is None:
        chosen = chosen.replace(tzinfo=UTC)
    return datetime.fromtimestamp(chosen.timestamp(), UTC)


def _dispatch(ctx: RunContext) -> dict[str, DispatchCounts]:
    """Send under the outbox limit, so a live backfill marking a past window skipped never races a send of it."""
    if ctx.dry_run:
        return {}
    ensure_outbox_limit_task(ctx.settings.outbox_limit)
    with concurrency(ctx.settings.outbox_limit, occupy=1, strict=True):
        return dispatch_task(ctx)
