"""The measured phases, each run in a fresh process so one phase's memory never shows in another's peak.

`python -m bench.phases '<json spec>'` runs one phase and prints one JSON line: its seconds (best of `repeat`),
the process's RSS when the phase began and its RSS high-water mark (`ru_maxrss`, kept by the kernel, so no peak
between two samples is missed), plus what the phase counted. Answers are written as Parquet for the parent to
compare; writing them is not timed.
"""

from __future__ import annotations

import json
import math
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import psutil

from bench import data, duck
from bench.definitions import load_segments, load_sql, ordered_names
from bench.timing import Timing, best_of, timed
from bench.workload import Workload
from engine.behaviour import Behaviour
from engine.feature_state import FeatureStateStore
from engine.ingest import ingest_events, scan_events
from engine.rollups import arrival_fingerprints, scan_rollups, update_rollups
from engine.rules import rule_features
from engine.segments import StateRun, compute_memberships, compute_memberships_with_state
from models.segments import SegmentDefinition

FLOOR_COLUMNS = ("user_id", "event", "ts", "value")


@dataclass(frozen=True)
class Spec:
    """What the parent asks a phase process to do; paths are relative to the workload's folder."""

    phase: str
    workload: Workload
    repeat: int = 1
    store: str = "store"
    at: str = "as_of"
    out: str = ""

    @property
    def store_dir(self) -> Path:
        return self.workload.folder / self.store

    @property
    def as_of(self) -> datetime:
        return self.workload.as_of if self.at == "as_of" else self.workload.next_as_of

    @property
    def out_dir(self) -> Path:
        return self.workload.folder / self.out

    def to_json(self) -> str:
        body = {**self.__dict__, "workload": self.workload.__dict__}
        return json.dumps(body)

    @staticmethod
    def from_json(text: str) -> Spec:
        body = json.loads(text)
        return Spec(**{**body, "workload": Workload(**body["workload"])})


def behaviour_at(store_dir: Path, as_of: datetime) -> Behaviour:
    """What a run at as_of sees, built exactly as `engine.pipeline.behaviour_at` builds it."""
    return Behaviour(
        as_of=as_of,
        events=scan_events(store_dir, as_of=as_of),
        rollups=scan_rollups(store_dir, through_day=as_of.date()),
    )


def engine_memberships(spec: Spec) -> dict[str, pl.Series]:
    """All benchmark segments over all users, with the engine, at the spec's instant."""
    users = pl.scan_parquet(spec.workload.users_file)
    return compute_memberships(load_segments(), users, behaviour_at(spec.store_dir, spec.as_of))


def write_answers(answers: dict[str, pl.Series], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, members in answers.items():
        members.to_frame("user_id").write_parquet(out_dir / f"{name}.parquet")


def phase_prepare(spec: Spec) -> dict[str, Any]:
    return data.prepare(spec.workload)


def phase_floor(spec: Spec) -> dict[str, Any]:
    """Read the four columns a segment needs from every visible event, with one cheap aggregate per column."""
    scan = scan_events(spec.store_dir, as_of=spec.as_of).select(
        pl.len().alias("rows"),
        pl.col("user_id").str.len_bytes().sum().alias("user_id_bytes"),
        pl.col("event").str.len_bytes().sum().alias("event_bytes"),
        pl.col("ts").max().alias("ts_max"),
        pl.col("value").sum().alias("value_sum"),
    )
    timing, frame = best_of(spec.repeat, scan.collect)
    return {**timing.fields(), "rows": int(frame["rows"][0])}


def phase_engine(spec: Spec) -> dict[str, Any]:
    timing, answers = best_of(spec.repeat, lambda: engine_memberships(spec))
    write_answers(answers, spec.out_dir)
    return timing.fields()


def phase_duckdb(spec: Spec) -> dict[str, Any]:
    """All segments as SQL over the same files; per-segment seconds come from the fastest whole run."""
    segments = load_segments()
    order = ordered_names(segments)
    sql = load_sql(order)
    files = [
        file
        for day, day_files in data.event_files_by_partition(spec.store_dir)
        if day <= spec.as_of.date()
        for file in day_files
    ]
    spill = spec.workload.run_dir / "duckdb-spill"
    spill.mkdir(parents=True, exist_ok=True)
    con = duck.connect(event_files=files, users_file=spec.workload.users_file, as_of=spec.as_of, spill_dir=spill)
    timing, per_segment = best_of(spec.repeat, lambda: duck.run_segments(con, sql, order))
    spec.out_dir.mkdir(parents=True, exist_ok=True)
    for name in order:
        duck.export(con, name, spec.out_dir / f"{name}.parquet")
    return {**timing.fields(), "per_segment": per_segment}


def phase_incremental(spec: Spec) -> dict[str, Any]:
    """One more day on a clone of the store, as a daily run with feature state does it.

    Untimed first, as a deployment would have done them: a full recompute that starts a state chain
    `warm_days` before as_of, then one run per day up to as_of, each advancing the state (`warm_days` is the
    longest sliding window that fits in the history, so the day leaving every window was recorded by an
    earlier run of the chain: the steady state of daily runs). Then timed, each once: ingest the new day's
    partition, fold it into rollups (that partition only), and advance the state to as_of + 1 day. Answers are
    written twice: the incremental ones, and a full recompute at as_of + 1 day (untimed) to compare with.
    """
    workload = spec.workload
    data.clone_store(workload.store_dir, spec.store_dir)
    new_day = workload.next_as_of.date()
    segments = load_segments()
    users = pl.scan_parquet(workload.users_file)
    store = FeatureStateStore(spec.store_dir / "feature_state")
    warm_days = warm_up_days(segments, workload.days)
    runs = []
    for back in range(warm_days, -1, -1):
        at = workload.as_of - timedelta(days=back)
        timing, (_, how) = timed(lambda at=at: with_state(segments, users, spec.store_dir, at, store))
        runs.append((timing, how))
    ingest, ingested = timed(lambda: ingest_events(workload.snapshot_dir, store_dir=spec.store_dir, through=new_day))
    rollup, rebuilt = timed(lambda: update_rollups(spec.store_dir))
    if rebuilt != [new_day]:
        raise RuntimeError(f"expected only {new_day} to be rolled up, got {rebuilt}")
    advance, (answers, how) = timed(lambda: with_state(segments, users, spec.store_dir, spec.as_of, store))
    if how.mode != "incremental":
        raise RuntimeError(f"the timed day did not advance the state: {how}")
    write_answers(answers, spec.out_dir)
    write_answers(engine_memberships(spec), spec.out_dir.with_name(spec.out_dir.name + "-full"))
    total = Timing(rollup.wall + advance.wall, rollup.cpu + advance.cpu)
    warm = runs[1:]
    return {
        **total.fields(),
        **ingest.fields("ingest_"),
        **rollup.fields("rollup_"),
        **advance.fields("segment_"),
        "rows_loaded": ingested.rows_loaded,
        "files_ingested": ingested.files_ingested,
        "bootstrap_seconds": runs[0][0].wall,
        "bootstrap_cpu_seconds": runs[0][0].cpu,
        "warm_days": len(warm),
        "warm_mean_seconds": sum(t.wall for t, _ in warm) / max(1, len(warm)),
        "warm_first_seconds": warm[0][0].wall if warm else None,
        "leaving_from_buckets": how.leaving_from_buckets,
        "leaving_raw": how.leaving_raw,
        "recomputed_users": how.recomputed_users,
    }


def with_state(
    segments: dict[str, SegmentDefinition],
    users: pl.LazyFrame,
    store_dir: Path,
    as_of: datetime,
    store: FeatureStateStore,
) -> tuple[dict[str, pl.Series], StateRun]:
    """What `engine.pipeline.recompute_segments` does for the segments of a daily run: advance the state."""
    arrivals = arrival_fingerprints(store_dir, through_day=as_of.date())
    return compute_memberships_with_state(segments, users, behaviour_at(store_dir, as_of), store, arrivals=arrivals)


def warm_up_days(segments: dict[str, SegmentDefinition], days: int) -> int:
    """Days of daily runs before as_of that record every interval the timed day's windows drop."""
    longest = max(
        (
            feature.window.last
            for definition in segments.values()
            for feature in rule_features(definition.rule)
            if feature.window is not None and feature.window.last is not None
        ),
        default=timedelta(0),
    )
    return min(days - 1, math.ceil(longest / timedelta(days=1)))


PHASES: dict[str, Callable[[Spec], dict[str, Any]]] = {
    "prepare": phase_prepare,
    "floor": phase_floor,
    "engine": phase_engine,
    "duckdb": phase_duckdb,
    "incremental": phase_incremental,
}


def main(argv: list[str]) -> None:
    spec = Spec.from_json(argv[0])
    start_rss = psutil.Process().memory_info().rss
    result = PHASES[spec.phase](spec)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    print(json.dumps({**result, "start_rss": start_rss, "peak_rss": peak_rss}, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
