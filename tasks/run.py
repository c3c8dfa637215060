"""Prefect tasks for one engine run: each wires settings, database and providers around one plain step."""

from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from engine import pipeline
from engine.db import connect
from engine.definitions import Definitions, load_definitions
from engine.dispatch import DispatchCounts, in_doubt
from engine.providers.factory import build_senders
from engine.providers.settings import FcmSettings, SendGridSettings
from engine.render import TemplateStore
from engine.run_log import finish_run, start_run
from engine.segments import SegmentChange
from engine.settings import EngineSettings
from engine.summary import RunSummary


@task(cache_policy=NO_CACHE)
def load_definitions_task(settings: EngineSettings) -> Definitions:
    """Refuse the run before it starts if any definition or template is broken."""
    return load_definitions(settings.definitions_dir, TemplateStore(settings.templates_dir))


@task(cache_policy=NO_CACHE)
def start_run_task(ctx: pipeline.RunContext, definitions: Definitions, flow_run_id: str | None) -> None:
    start_run(
        connect(ctx.settings.database),
        run_id=ctx.run_id,
        flow_run_id=flow_run_id,
        as_of=ctx.as_of,
        dry_run=ctx.dry_run,
        started_at=datetime.now(UTC),
        definitions=definitions.versions,
    )


@task(cache_policy=NO_CACHE)
def ingest_task(ctx: pipeline.RunContext) -> pipeline.IngestSummary:
    return pipeline.ingest(ctx)


@task(cache_policy=NO_CACHE)
def check_definitions_task(ctx: pipeline.RunContext, definitions: Definitions) -> list[str]:
    """Refuse definitions whose types cannot match this snapshot; log names that do not occur in it."""
    warnings = pipeline.check_definitions(ctx, definitions)
    logger = get_run_logger()
    for warning in warnings:
        logger.warning(warning)
    return warnings


@task(cache_policy=NO_CACHE)
def segments_task(ctx: pipeline.RunContext, definitions: Definitions) -> dict[str, SegmentChange]:
    return pipeline.recompute_segments(ctx, definitions, connect(ctx.settings.database))


@task(cache_policy=NO_CACHE)
def journeys_task(
    ctx: pipeline.RunContext, definitions: Definitions, changes: dict[str, SegmentChange]
) -> list[pipeline.JourneySummary]:
    return pipeline.advance_journeys(ctx, definitions, connect(ctx.settings.database), changes)


@task(cache_policy=NO_CACHE)
def dispatch_task(ctx: pipeline.RunContext) -> dict[str, DispatchCounts]:
    """Send through the configured providers; the ledger, not Prefect retries, makes sends happen once."""
    if ctx.dry_run:
        return {}
    with build_senders(SendGridSettings(), FcmSettings()) as senders:
        templates = TemplateStore(ctx.settings.templates_dir)
        return pipeline.dispatch(ctx, connect(ctx.settings.database), templates, senders)


@task(cache_policy=NO_CACHE)
def finish_run_task(ctx: pipeline.RunContext, summary: RunSummary) -> None:
    finish_run(
        connect(ctx.settings.database),
        run_id=ctx.run_id,
        status="completed",
        finished_at=datetime.now(UTC),
        fingerprint=summary.ingest.fingerprint,
        counts=summary.counts(),
    )


@task(cache_policy=NO_CACHE)
def count_in_doubt_task(ctx: pipeline.RunContext) -> int:
    return in_doubt(connect(ctx.settings.database), run_id=ctx.run_id)


@task(cache_policy=NO_CACHE)
def publish_artifacts_task(summary: RunSummary) -> None:
    """A readable summary in the Prefect UI, plus the segment table for trend charts."""
    key = f"run-{summary.as_of.strftime('%Y-%m-%d-%H%M')}" + ("-dry" if summary.dry_run else "")
    create_markdown_artifact(key=key, markdown=summary.markdown(), description=f"Engine run {summary.run_id}")
    create_table_artifact(
        key=f"{key}-segments",
        table=[{"segment": s.name, "size": s.size, "entered": s.entered, "exited": s.exited} for s in summary.segments],
        description="Segment sizes and churn",
    )
