"""The engine's main flow: one run for one as_of, from raw events to sent messages."""

from datetime import datetime
from uuid import uuid4

from prefect import flow
from prefect.runtime import flow_run

from engine.pipeline import RunContext, summarize_segments
from engine.settings import EngineSettings
from engine.summary import RunSummary
from flows.edges import dispatch_under_outbox_limit, record_failure, resolve_as_of
from tasks.run import (
    check_definitions_task,
    count_in_doubt_task,
    experiments_task,
    finish_run_task,
    ingest_task,
    journeys_task,
    load_definitions_task,
    publish_artifacts_task,
    publish_run_html_task,
    segments_task,
    start_run_task,
)


@flow(name="daily-campaign", log_prints=True, on_failure=[record_failure], on_crashed=[record_failure])
def daily_campaign(as_of: datetime | None = None, dry_run: bool = False) -> RunSummary:
    """Ingest new events, recompute segments, advance journeys and send what they planned.

    Args:
        as_of: The instant this run treats as now, in UTC. Events before it count, journeys move up to it and
            messages are planned at it. Leave empty to use the flow run's scheduled start time. Running the
            same as_of again sends nothing twice.
        dry_run: Compute segments, journey steps and the messages they would plan, but write no state and
            send nothing.
    """
    as_of = resolve_as_of(as_of)
    ctx = RunContext(run_id=str(flow_run.id or uuid4()), as_of=as_of, dry_run=dry_run, settings=EngineSettings())
    definitions = load_definitions_task(ctx.settings)
    if not dry_run:
        start_run_task(ctx, definitions, flow_run.id)
    ingest = ingest_task(ctx)
    warnings = check_definitions_task(ctx, definitions)
    changes = segments_task(ctx, definitions)
    journeys = journeys_task(ctx, definitions, changes)
    delivery = dispatch_under_outbox_limit(ctx)
    experiments_task(ctx, definitions)
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
        publish_run_html_task(ctx)
    publish_artifacts_task(summary)
    return summary
