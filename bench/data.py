"""Preparing a workload's data once: generate, add a numeric attribute, ingest, roll up, normalize users.

Everything goes through the project's own code (`engine.sample.generate`, `ingest_events`, `update_rollups`,
`load_users`), so the benchmark measures the store a real run would read. The result is cached under
`bench/.cache/<workload>/` with a `data.json` written last: a folder without it is a half-prepared leftover and is
rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from bench.timing import timed
from bench.workload import START, Workload
from engine.contract import EVENTS_DIR, USERS_DIR
from engine.ingest import ingest_events, load_users
from engine.ingest.layout import is_hidden, partitions
from engine.rollups import update_rollups
from engine.sample import GenerateReport, generate
from engine.sample.rng import uniform

MARKER = "data.json"
AGE_KNOWN_SHARE = 0.8


def prepare(workload: Workload) -> dict[str, Any]:
    """The data report of the workload, preparing the data first unless a complete cache exists."""
    marker = workload.folder / MARKER
    if marker.exists():
        return {**json.loads(marker.read_text()), "cached": True}
    shutil.rmtree(workload.folder, ignore_errors=True)
    report = _build(workload)
    marker.write_text(json.dumps(report, indent=1))
    return {**report, "cached": False}


def _build(workload: Workload) -> dict[str, Any]:
    def generate_with_age() -> GenerateReport:
        report = generate(
            workload.snapshot_dir, users=workload.users, days=workload.generated_days, start=START, seed=workload.seed
        )
        add_age(workload.snapshot_dir / USERS_DIR / "users.parquet", seed=workload.seed)
        return report

    generating, generated = timed(generate_with_age)
    ingesting, ingested = timed(
        lambda: ingest_events(workload.snapshot_dir, store_dir=workload.store_dir, through=workload.as_of.date())
    )
    rolling, rebuilt = timed(lambda: update_rollups(workload.store_dir))
    load_users(workload.snapshot_dir, as_of=workload.as_of).users.write_parquet(workload.users_file)
    return {
        **generating.fields("generate_"),
        **ingesting.fields("ingest_"),
        **rolling.fields("rollup_"),
        "generated_events": generated.events,
        "ingested_rows": ingested.rows_loaded,
        "quarantined_rows": ingested.rows_quarantined,
        "rollup_partitions": len(rebuilt),
        "events_bytes": tree_bytes(workload.store_dir / EVENTS_DIR),
        "rollups_bytes": tree_bytes(workload.store_dir / "rollups"),
        "users_bytes": workload.users_file.stat().st_size,
        "event_partitions": len(event_files_by_partition(workload.store_dir)),
    }


def add_age(users_file: Path, *, seed: int) -> None:
    """Add a free numeric attribute `age` (null for a fifth of users), which the generator has none of.

    The contract allows free user attributes; without a number the `lt` / `gt` operators would go unmeasured.
    Drawn from the project's counter-based RNG on the numeric part of the user id, so it is seeded and stable.
    """
    uid = pl.col("user_id").str.slice(1).cast(pl.Int64)
    age = (18 + uniform(seed, "bench/age", uid) * 62).floor().cast(pl.Int64)
    known = uniform(seed, "bench/age_known", uid) < AGE_KNOWN_SHARE
    users = pl.read_parquet(users_file)
    users.with_columns(pl.when(known).then(age).alias("age")).write_parquet(users_file)


def event_files_by_partition(store_dir: Path) -> list[tuple[Any, list[Path]]]:
    """The store's normalized event files per arrival partition, oldest first (as `scan_events` lists them)."""
    root = store_dir / EVENTS_DIR
    return [
        (day, [file for file in sorted(folder.glob("*.parquet")) if not is_hidden(file)])
        for day, folder in partitions(root, base=store_dir)
    ]


def tree_bytes(folder: Path) -> int:
    """Bytes of the Parquet files under `folder`: what the store costs on disk."""
    return sum(path.stat().st_size for path in folder.rglob("*.parquet") if not is_hidden(path))


def clone_store(source: Path, target: Path) -> None:
    """A copy of a store in which one more day can be ingested without touching the original.

    Normalized event files are hard-linked (ingest only ever replaces them by rename, a new inode, so the
    original keeps its own), which makes the clone cost no disk at any size. Everything else, rollups and
    manifests, which `update_rollups` writes in place, is copied with its modification time: the rollups
    manifest fingerprints event files by size and mtime, and a changed mtime would make it refold every day.
    """
    shutil.rmtree(target, ignore_errors=True)
    events = source / EVENTS_DIR
    for folder, _, files in os.walk(source):
        here = Path(folder)
        destination = target / here.relative_to(source)
        destination.mkdir(parents=True, exist_ok=True)
        for name in files:
            if name.endswith(".parquet") and here.is_relative_to(events):
                os.link(here / name, destination / name)
            else:
                shutil.copy2(here / name, destination / name)
