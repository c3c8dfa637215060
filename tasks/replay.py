"""Prefect tasks for backfill, replay and rebuild: each wires settings and the database around one plain step.

The engine steps of a day (ingest, segments, journeys) are the daily run's own tasks, in `tasks/run.py`.
"""

from datetime import datetime

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from engine import backfill, replay
from engine.db import connect
from engine.pipeline import JourneySummary, RunContext
from engine.run_log import LiveRun, live_runs
from engine.settings import EngineSettings
from engine.workspace import add_computed, open_workspace


@task(cache_policy=NO_CACHE)
def live_runs_task(settings: EngineSettings) -> list[LiveRun]:
    """The live run history; none (and no database created) when nothing has ever run live."""
    database = replay.existing_database(settings)
    return live_runs(database) if database is not None else []


@task(cache_policy=NO_CACHE)
def plan_replay_task(
    settings: EngineSettings,
    versions: dict[str, str],
    requested: list[datetime],
    runs: list[LiveRun],
    workspace: str,
    fresh: bool,
) -> replay.ReplayPlan:
    """Open the shadow workspace and decide what to compute; log what is reused and what is replayed first."""
    plan = replay.plan_replay(open_workspace(settings, workspace), versions, requested, runs, fresh=fresh)
    history = [day for day in plan.sequence if day.as_of < requested[0]]
    get_run_logger().info(
        "workspace %s: %d as_of(s) in sequence (%d of live history before %s), %d to compute",
        plan.workspace.root,
        len(plan.sequence),
        len(history),
        requested[0].isoformat(),
        len(plan.todo),
    )
    return plan


@task(cache_policy=NO_CACHE)
def record_computed_task(plan: replay.ReplayPlan, as_of: datetime) -> None:
    """Mark the as_of computed in the workspace, only after all its state is written."""
    add_computed(plan.workspace, next(day for day in plan.todo if day.as_of == as_of))


@task(cache_policy=NO_CACHE)
def replay_report_task(plan: replay.ReplayPlan, live: EngineSettings) -> replay.ReplayReport:
    return replay.replay_report(plan, live)


@task(cache_policy=NO_CACHE)
def publish_replay_task(report: replay.ReplayReport) -> None:
    """The comparison with live in the Prefect UI: what an operator reads before turning the dry run off."""
    key = f"replay-{report.workspace}"
    create_markdown_artifact(key=key, markdown=report.markdown(), description="Replay compared with live runs")
    create_table_artifact(key=f"{key}-comparison", table=report.table(), description="Live vs replay, per as_of")


@task(cache_policy=NO_CACHE)
def skip_past_plans_task(ctx: RunContext, journeys: list[JourneySummary], started: datetime) -> list[JourneySummary]:
    """Record the day's planned messages as skipped (`backfill`) when the day is past; returns relabelled counts."""
    moved = backfill.skip_past_plans(connect(ctx.settings.database), as_of=ctx.as_of, started=started)
    total = sum(counts[key] for counts in moved.values() for key in counts if key.endswith(":planned"))
    get_run_logger().info("%s: %d planned message(s) skipped as backfill", ctx.as_of.isoformat(), total)
    return backfill.relabel(journeys, moved)


@task(cache_policy=NO_CACHE)
def segment_sizes_task(settings: EngineSettings, as_of: datetime) -> dict[str, int]:
    return replay.segment_sizes(connect(settings.database), as_of)


@task(cache_policy=NO_CACHE)
def publish_backfill_task(report: backfill.BackfillReport | backfill.RebuildReport, key: str) -> None:
    create_markdown_artifact(key=key, markdown=report.markdown(), description="Live backfill or rebuild")
