"""Prefect tasks for one engine run: each wires settings, database and providers around one plain step."""

from contextlib import suppress
from datetime import UTC, datetime, timedelta

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from engine import pipeline
from engine.channels.registry import load_channel_plugins
from engine.channels.senders import build_channel_senders
from engine.db import connect
from engine.definitions import Definitions, load_definitions
from engine.dispatch import DispatchCounts, in_doubt, raise_for_configuration
from engine.dispatch_policy import DispatchSettings, WallClock
from engine.experiments import ExperimentReport
from engine.render import TemplateStore
from engine.report_html import activity_html, experiment_html
from engine.reports import activity_report
from engine.run_log import finish_run, start_run
from engine.segments import SegmentChange
from engine.settings import EngineSettings
from engine.summary import RunSummary
from tasks.pacing import provider_pacers
from tasks.reports import publish_html


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
    """Send through the configured providers; the ledger, not Prefect retries, makes sends happen once.

    Paced by the Prefect rate limits of `tasks/pacing.py` where they exist, on the wall clock. A provider that
    refuses our credentials fails the task (after the other channels were sent) with a ConfigurationAlert.
    Channel plugins are loaded here too: the dispatch-only flow reads no definitions.
    """
    if ctx.dry_run:
        return {}
    logger = get_run_logger()
    load_channel_plugins()
    with build_channel_senders() as senders:
        templates = TemplateStore(ctx.settings.templates_dir)
        counts = pipeline.dispatch(
            ctx,
            connect(ctx.settings.database),
            templates,
            senders,
            settings=DispatchSettings(),
            clock=WallClock(),
            pacers=provider_pacers(logger),
        )
    for channel, channel_counts in counts.items():
        logger.info("%s: %s", channel, channel_counts.as_dict())
    raise_for_configuration(counts)
    return counts


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


@task(cache_policy=NO_CACHE)
def publish_run_html_task(ctx: pipeline.RunContext, days: int = 7) -> None:
    """A live run's HTML page: the activity of the week up to and including this run, charts first, so the
    UI shows with each run how it compares with the days before."""
    end = ctx.as_of.date()
    report = activity_report(connect(ctx.settings.database), start=end - timedelta(days=days - 1), end=end)
    key = f"run-{ctx.as_of:%Y-%m-%d-%H%M}"
    page = ctx.settings.home / "reports" / f"{key}.html"
    publish_html(page, activity_html(report), key=key, description=f"Engine run {ctx.run_id} and the days before")


@task(cache_policy=NO_CACHE)
def experiments_task(ctx: pipeline.RunContext, definitions: Definitions) -> list[ExperimentReport]:
    """Analyze every journey experiment as of this run and publish each as an artifact, one key per experiment
    so the UI shows its history run after run."""
    reports = pipeline.experiment_reports(ctx, definitions, connect(ctx.settings.database))
    for report in reports:
        experiment = report.experiment
        key = f"experiment-{experiment.journey}-{experiment.node}".replace("_", "-").lower()
        description = f"Experiment {experiment.title} as of {ctx.as_of:%Y-%m-%d %H:%M} UTC"
        create_markdown_artifact(key=key, markdown=report.markdown(), description=description)
        html = experiment_html(report.result, name=experiment.title)
        page = ctx.settings.home / "reports" / f"{key}-{ctx.as_of:%Y-%m-%dT%H%M}.html"
        publish_html(page, html, key=key, description=description)
    return reports


@task(cache_policy=NO_CACHE)
def ensure_outbox_limit_task(name: str) -> None:
    """Create the one-slot global concurrency limit guarding outbox windows, if no one has yet.

    Created here rather than left to the operator: `concurrency(..., strict=True)` would otherwise refuse to
    run, and a non-strict one would silently guard nothing. An existing limit is left as configured.
    """
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with suppress(ObjectAlreadyExists):  # created by a concurrent flow in between
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
