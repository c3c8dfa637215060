"""Backfill, replay and rebuild over a range of days: dry by default, and never sending for a past day.

The three modes share the daily run's steps (`tasks/run.py`); what differs is where they write (a shadow
workspace or live state) and what they leave out (dispatch always; journeys in a rebuild). See
`engine/replay.py` and `engine/backfill.py` for the rules each mode follows.
"""

from datetime import UTC, date, datetime, time
from uuid import uuid4

from prefect import flow
from prefect.runtime import flow_run

from engine.backfill import BackfillReport, RebuildReport, RebuiltDay, plan_backfill, plan_rebuild
from engine.definitions import Definitions
from engine.pipeline import IngestSummary, JourneySummary, RunContext, summarize_segments
from engine.replay import ReplayReport, daily_as_ofs, shadow_run_id
from engine.run_log import LiveRun
from engine.segments import SegmentChange
from engine.settings import EngineSettings
from engine.summary import RunSummary
from flows.edges import outbox_slot, record_failure
from tasks.replay import (
    live_runs_task,
    plan_replay_task,
    publish_backfill_task,
    publish_replay_task,
    record_computed_task,
    replay_report_task,
    segment_sizes_task,
    skip_past_plans_task,
)
from tasks.run import (
    check_definitions_task,
    count_in_doubt_task,
    ensure_outbox_limit_task,
    finish_run_task,
    ingest_task,
    journeys_task,
    load_definitions_task,
    publish_artifacts_task,
    segments_task,
    start_run_task,
)


def _run_name() -> str:
    """Names the run after its mode, so the UI's run list tells a replay from a live backfill at a glance."""
    given = flow_run.parameters
    mode = "replay" if given.get("dry_run", True) else "rebuild" if given.get("rebuild") else "backfill"
    return f"{mode} {given['start']}..{given['end']}"


@flow(
    name="backfill",
    flow_run_name=_run_name,
    log_prints=True,
    on_failure=[record_failure],
    on_crashed=[record_failure],
)
def backfill(
    start: date,
    end: date,
    at: time = time(6),
    dry_run: bool = True,
    rebuild: bool = False,
    workspace: str = "default",
    fresh: bool = False,
) -> ReplayReport | BackfillReport | RebuildReport:
    """Run the engine over past days, in order: a dry replay by default, a live backfill, or a rebuild.

    Nothing is ever sent for a past day. A dry run computes every day in a shadow workspace under
    NUDGE_HOME/replays/<workspace>/ (its own database and stores; live state is only read), replaying the live
    run history before `start` so journeys are where they were, and compares each day with its live run in an
    artifact. A live backfill runs the days no live run completed, on live state, and records their messages
    as skipped (reason `backfill`). A rebuild recomputes rollups and segments of days already run, after late data.

    Args:
        start: First day to run (UTC date).
        end: Last day to run, inclusive (UTC date).
        at: Time of day of each run's as_of, UTC; the daily schedule runs at 06:00.
        dry_run: Compute in the shadow workspace and compare with live; write no live state, send nothing.
            Turn off for a live backfill (or a rebuild): days after the latest live run only, never sending.
        rebuild: With dry_run off: recompute rollups, segments and segment size history of days a live run
            completed, after late or corrected data; journeys are not touched and nothing is sent.
        workspace: Name of the shadow workspace of a dry run (lower-case letters, digits, dashes). It is reused
            while the definitions and input files it was computed from are unchanged, and started over otherwise.
        fresh: Start the shadow workspace over even if it could be reused (e.g. after an engine upgrade).
    """
    started = datetime.now(UTC)  # "past" is decided once, here: a long backfill does not move its own line
    settings = EngineSettings()
    as_ofs = daily_as_ofs(start, end, at)
    definitions = load_definitions_task(settings)
    runs = live_runs_task(settings)
    if dry_run:
        return _replay(settings, definitions, as_ofs, runs, workspace, fresh)
    if rebuild:
        return _rebuild(settings, definitions, as_ofs, runs)
    return _backfill(settings, definitions, as_ofs, runs, started)


def _replay(
    settings: EngineSettings,
    definitions: Definitions,
    as_ofs: list[datetime],
    runs: list[LiveRun],
    workspace: str,
    fresh: bool,
) -> ReplayReport:
    """Compute what the workspace lacks, day by day without dispatch, then write outputs and the comparison."""
    plan = plan_replay_task(settings, definitions.versions, as_ofs, runs, workspace, fresh)
    for day in plan.todo:
        ctx = RunContext(
            run_id=shadow_run_id(day.as_of), as_of=day.as_of, dry_run=False, settings=plan.workspace.settings
        )
        start_run_task(ctx, definitions, flow_run.id)
        ingest = ingest_task(ctx)
        warnings = check_definitions_task(ctx, definitions)
        changes = segments_task(ctx, definitions)
        journeys = journeys_task(ctx, definitions, changes)
        finish_run_task(ctx, _summary(ctx, ingest, changes, journeys, warnings, in_doubt=0))
        record_computed_task(plan, day.as_of)
    report = replay_report_task(plan, settings)
    publish_replay_task(report)
    return report


def _backfill(
    settings: EngineSettings,
    definitions: Definitions,
    as_ofs: list[datetime],
    runs: list[LiveRun],
    started: datetime,
) -> BackfillReport:
    """Run each never-run day on live state; its plans become skips under the outbox limit, before any dispatch."""
    plan = plan_backfill(as_ofs, runs, started=started)
    ensure_outbox_limit_task(settings.outbox_limit)
    summaries = []
    for as_of in plan.run:
        ctx = RunContext(run_id=str(uuid4()), as_of=as_of, dry_run=False, settings=settings)
        start_run_task(ctx, definitions, flow_run.id)
        ingest = ingest_task(ctx)
        warnings = check_definitions_task(ctx, definitions)
        changes = segments_task(ctx, definitions)
        with outbox_slot(settings):
            journeys = journeys_task(ctx, definitions, changes)
            journeys = skip_past_plans_task(ctx, journeys, started)
        summary = _summary(ctx, ingest, changes, journeys, warnings, in_doubt=count_in_doubt_task(ctx))
        finish_run_task(ctx, summary)
        publish_artifacts_task(summary)
        summaries.append(summary)
    report = BackfillReport(runs=tuple(summaries), already_run=plan.already_run)
    publish_backfill_task(report, key=f"backfill-{as_ofs[0]:%Y-%m-%d}-{as_ofs[-1]:%Y-%m-%d}")
    return report


def _rebuild(
    settings: EngineSettings, definitions: Definitions, as_ofs: list[datetime], runs: list[LiveRun]
) -> RebuildReport:
    """Ingest late data and recompute the segments of each day a live run completed; journeys stay as they are."""
    rebuild, not_run = plan_rebuild(as_ofs, runs)
    days = []
    for as_of in rebuild:
        ctx = RunContext(run_id=f"rebuild-{flow_run.id or uuid4()}", as_of=as_of, dry_run=False, settings=settings)
        before = segment_sizes_task(settings, as_of)
        ingest_task(ctx)
        check_definitions_task(ctx, definitions)
        changes = segments_task(ctx, definitions)
        days.append(RebuiltDay(as_of, before, {s.name: s.size for s in summarize_segments(changes)}))
    report = RebuildReport(days=tuple(days), not_run=not_run)
    publish_backfill_task(report, key=f"rebuild-{as_ofs[0]:%Y-%m-%d}-{as_ofs[-1]:%Y-%m-%d}")
    return report


def _summary(
    ctx: RunContext,
    ingest: IngestSummary,
    changes: dict[str, SegmentChange],
    journeys: list[JourneySummary],
    warnings: list[str],
    *,
    in_doubt: int,
) -> RunSummary:
    """What the run history records of a day that planned but did not dispatch."""
    return RunSummary(
        run_id=ctx.run_id,
        as_of=ctx.as_of,
        dry_run=False,
        ingest=ingest,
        segments=summarize_segments(changes),
        journeys=journeys,
        delivery={},
        in_doubt=in_doubt,
        warnings=warnings,
    )
