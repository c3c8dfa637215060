"""The engine's run with its per-user stages sharded by user over a Dask cluster (see docs/scale-out.md).

The same steps as `flows/daily.py`, and the same outputs: segments and journey steps are computed shard by shard
on the Dask workers (`tasks/shards.py`), everything else runs in the flow's process as in the daily run.
"""

from datetime import datetime
from uuid import uuid4

from prefect import flow, unmapped
from prefect.runtime import flow_run

from engine.definitions import Definitions
from engine.pipeline import JourneySummary, RunContext, summarize_segments
from engine.segments import SegmentChange
from engine.settings import EngineSettings
from engine.shards import absolute
from engine.summary import RunSummary
from flows.edges import dispatch_under_outbox_limit, record_failure, resolve_as_of
from tasks.run import (
    check_definitions_task,
    count_in_doubt_task,
    finish_run_task,
    ingest_task,
    load_definitions_task,
    publish_artifacts_task,
    start_run_task,
)
from tasks.shards import (
    DaskSettings,
    clear_scratch_task,
    dask_task_runner,
    journey_shard_task,
    merge_journeys_task,
    merge_segments_task,
    segment_shard_task,
)


@flow(
    name="daily-campaign-sharded",
    log_prints=True,
    task_runner=dask_task_runner(DaskSettings()),
    on_failure=[record_failure],
    on_crashed=[record_failure],
)
def daily_campaign_sharded(as_of: datetime | None = None, dry_run: bool = False, shards: int = 4) -> RunSummary:
    """The daily run, with segments and journeys computed in shards of users on a Dask cluster.

    Gives the same segments, journey steps and messages as the daily-campaign flow. The cluster is the one at
    NUDGE_DASK_ADDRESS, or a temporary local one; every worker must see the engine's home, snapshot and
    definitions at the same paths, and its database.

    Args:
        as_of: The instant this run treats as now, in UTC. Events before it count, journeys move up to it and
            messages are planned at it. Leave empty to use the flow run's scheduled start time. Running the
            same as_of again sends nothing twice.
        dry_run: Compute segments, journey steps and the messages they would plan, but write no state and
            send nothing.
        shards: How many shards of users to split the per-user stages into; each is one Dask task per stage.
            Any number gives the same outputs: pick a few per worker, so that one shard's rows fit its memory.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, not {shards}")
    as_of = resolve_as_of(as_of)
    settings = absolute(EngineSettings())
    ctx = RunContext(run_id=str(flow_run.id or uuid4()), as_of=as_of, dry_run=dry_run, settings=settings)
    definitions = load_definitions_task(ctx.settings)
    if not dry_run:
        start_run_task(ctx, definitions, flow_run.id)
    ingest = ingest_task(ctx)
    warnings = check_definitions_task(ctx, definitions)
    try:
        changes, journeys = _sharded_stages(ctx, definitions, shards)
    finally:
        clear_scratch_task(ctx)
    delivery = dispatch_under_outbox_limit(ctx)
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


def _sharded_stages(
    ctx: RunContext, definitions: Definitions, count: int
) -> tuple[dict[str, SegmentChange], list[JourneySummary]]:
    """Segments, then journeys: each a map over the shards on Dask, then a merge in the flow's process."""
    shard_args = (unmapped(ctx), range(count), unmapped(count), unmapped(definitions.versions))
    segment_shard_task.map(*shard_args).result()
    changes = merge_segments_task(ctx, definitions, count)
    journey_shard_task.map(*shard_args).result()
    journeys = merge_journeys_task(ctx, definitions, count)
    return changes, journeys
