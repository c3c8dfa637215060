"""Per-user-per-day rollups of the normalized events, one Parquet partition per arrival date.

Rollups are keyed by the day an event happened *and* the day it arrived (`load_date`). Partitioning by arrival
makes the fold incremental with no bookkeeping of which days late data touched: a new or corrected arrival
partition is rolled up on its own, and a run at any past `as_of` sees exactly the arrivals it saw then
(`load_date <= as_of`'s date), which is what makes time travel exact.
"""

import json
from datetime import date
from pathlib import Path

import polars as pl

ROLLUP_SCHEMA = pl.Schema(
    {
        "user_id": pl.String,
        "event": pl.String,
        "day": pl.Date,
        "load_date": pl.Date,
        "n": pl.UInt32,
        "value_sum": pl.Float64,
        "value_min": pl.Float64,
        "value_max": pl.Float64,
        "first_ts": pl.Datetime("us", "UTC"),
        "last_ts": pl.Datetime("us", "UTC"),
    }
)
_MANIFEST = "manifest.json"


def rollup_events(events: pl.LazyFrame) -> pl.LazyFrame:
    """Fold events into one row per (user, event, day, load_date); sorted, so files are byte-stable."""
    return (
        events.group_by("user_id", "event", pl.col("ts").dt.date().alias("day"), "load_date")
        .agg(
            pl.len().cast(pl.UInt32).alias("n"),
            pl.col("value").sum().alias("value_sum"),
            pl.col("value").min().alias("value_min"),
            pl.col("value").max().alias("value_max"),
            pl.col("ts").min().alias("first_ts"),
            pl.col("ts").max().alias("last_ts"),
        )
        .sort("user_id", "event", "day")
        .select(ROLLUP_SCHEMA.names())
    )


def update_rollups(store_dir: Path) -> list[date]:
    """Roll up every arrival partition whose normalized files changed since it was last rolled up.

    Returns the arrival dates rebuilt. The fingerprint of a partition is its files' names, sizes and
    modification times: ingestion rewrites a partition's files exactly when their raw input changed.
    """
    events_root = store_dir / "events"
    rollup_root = store_dir / "rollups"
    manifest_path = rollup_root / _MANIFEST
    manifest: dict[str, str] = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    rebuilt: list[date] = []
    for partition in sorted(events_root.glob("date=*")):
        load_date = partition.name.removeprefix("date=")
        fingerprint = _fingerprint(partition)
        target = rollup_root / f"load_date={load_date}" / "part-0.parquet"
        if manifest.get(load_date) == fingerprint and target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        rollup_events(pl.scan_parquet(sorted(partition.glob("*.parquet")))).sink_parquet(target)
        manifest[load_date] = fingerprint
        rebuilt.append(date.fromisoformat(load_date))
    rollup_root.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return rebuilt


def scan_rollups(store_dir: Path, *, through_day: date) -> pl.LazyFrame:
    """Rollup rows of whole days before `through_day` that had arrived by `through_day`."""
    files = sorted(
        path
        for path in (store_dir / "rollups").glob("load_date=*/part-0.parquet")
        if date.fromisoformat(path.parent.name.removeprefix("load_date=")) <= through_day
    )
    if not files:
        return pl.LazyFrame(schema=ROLLUP_SCHEMA)
    return pl.scan_parquet(files).filter(pl.col("day") < through_day)


def arrival_fingerprints(store_dir: Path, *, through_day: date) -> dict[str, str]:
    """Each arrival partition of normalized events up to `through_day`, by ISO date, with its fingerprint.

    The same fingerprint as the rollup manifest's: a partition whose files change gets a new one, so state
    computed from the events (see `engine.feature_state`) can tell the data it saw from data corrected since.
    """
    events_root = store_dir / "events"
    return {
        day: _fingerprint(partition)
        for partition in sorted(events_root.glob("date=*"))
        if (day := partition.name.removeprefix("date=")) <= through_day.isoformat()
    }


def _fingerprint(partition: Path) -> str:
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(partition.glob("*.parquet"))]
    return json.dumps(stats)
