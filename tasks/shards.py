"""Prefect tasks of a sharded run, and the Dask task runner they are submitted to.

The shard tasks are submitted (`.map`) and so run on the Dask workers; the merge tasks are called directly and
run in the flow's process. Tasks receive the run context (a few paths and the as_of) and the definitions'
versions, never frames: a shard reads the stores itself and leaves its output in the run's scratch folder.
"""

from collections.abc import Mapping

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect_dask import DaskTaskRunner
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine import pipeline, shards
from engine.db import connect
from engine.definitions import Definitions
from engine.segments import SegmentChange


class DaskSettings(BaseSettings):
    """Where the shard tasks run, from `NUDGE_DASK_*` environment variables (see docs/scale-out.md).

    With `NUDGE_DASK_ADDRESS` set (`tcp://scheduler:8786`), every flow run connects to that existing cluster;
    otherwise each flow run starts a temporary local cluster of `n_workers` processes and closes it at the end.
    """

    model_config = SettingsConfigDict(env_prefix="NUDGE_DASK_", extra="ignore")

    address: str | None = None
    n_workers: int = 2
    threads_per_worker: int = 1


def dask_task_runner(settings: DaskSettings) -> DaskTaskRunner:
    if settings.address:
        return DaskTaskRunner(address=settings.address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": settings.n_workers,
            "processes": True,
            "threads_per_worker": settings.threads_per_worker,
        }
    )


@task(cache_policy=NO_CACHE, retries=1)
def segment_shard_task(ctx: pipeline.RunContext, index: int, count: int, versions: Mapping[str, str]) -> dict[str, int]:
    """One shard's members of every shardable segment, into the run's scratch folder; returns their sizes."""
    return shards.segment_shard(ctx, shards.Shard(index, count), versions)


@task(cache_policy=NO_CACHE)
def merge_segments_task(ctx: pipeline.RunContext, definitions: Definitions, count: int) -> dict[str, SegmentChange]:
    """The shards' members gathered, the unshardable segments computed whole, changes diffed and stored."""
    whole = sorted(shards.whole_python_segments(definitions))
    if whole:
        get_run_logger().info("computed unsharded (not declared PER_USER): %s", ", ".join(whole))
    return shards.merge_segments(ctx, definitions, connect(ctx.settings.database), count)


@task(cache_policy=NO_CACHE, retries=1)
def journey_shard_task(ctx: pipeline.RunContext, index: int, count: int, versions: Mapping[str, str]) -> dict[str, int]:
    """One shard's step of every live journey, into the run's scratch folder; returns transitions per journey."""
    return shards.journey_shard(ctx, shards.Shard(index, count), versions)


@task(cache_policy=NO_CACHE)
def merge_journeys_task(
    ctx: pipeline.RunContext, definitions: Definitions, count: int
) -> list[pipeline.JourneySummary]:
    """The shards' journey steps gathered, their messages planned under the delivery controls and written."""
    return shards.merge_journeys(ctx, definitions, connect(ctx.settings.database), count)


@task(cache_policy=NO_CACHE)
def clear_scratch_task(ctx: pipeline.RunContext) -> None:
    shards.ShardScratch(ctx.settings, ctx.run_id).clear()
