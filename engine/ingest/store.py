"""The normalized events store: incremental ingest from a raw snapshot, and as-of scans for runs.

Layout under `store_dir`:

    manifest.json                                  raw file -> size + sha256 of what was normalized
    events/date=YYYY-MM-DD/<raw file stem>.parquet canonical rows (EVENT_SCHEMA), sorted by ts
    quarantine/events/date=YYYY-MM-DD/<stem>.parquet rejected rows (QUARANTINE_SCHEMA), only when any

The store mirrors the snapshot up to `through`: a changed raw file is normalized again, a removed one has its
outputs deleted, an unchanged one is skipped. Each output is written to a hidden temporary name and renamed,
and the manifest is saved after every file, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath

import polars as pl

from engine.contract import EVENT_SCHEMA, EVENTS_DIR, QUARANTINE_DIR, SnapshotError, partition_date, partition_name
from engine.ingest.events import normalize_file
from engine.ingest.layout import data_files, is_hidden, partitions
from engine.ingest.manifest import file_digest, fingerprint, load_manifest, save_manifest


@dataclass(frozen=True)
class FileReport:
    """What one raw file yielded in this run."""

    path: str
    load_date: date
    rows_read: int
    rows_loaded: int
    quarantined: dict[str, int]
    properties_canonical: bool


@dataclass(frozen=True)
class IngestReport:
    """What an ingest run did, and which input it saw.

    `fingerprint` covers every raw file with a partition on or before `through` (normalized or skipped), so a
    downstream run can record exactly which snapshot its answers come from.
    """

    files: tuple[FileReport, ...]
    skipped: tuple[str, ...]
    removed: tuple[str, ...]
    fingerprint: str

    @property
    def files_ingested(self) -> int:
        """Raw files normalized in this run (new or changed)."""
        return len(self.files)

    @property
    def files_unchanged(self) -> int:
        """Raw files skipped because the store already holds them as they are."""
        return len(self.skipped)

    @property
    def quarantined_by_reason(self) -> dict[str, int]:
        """Rows rejected in this run, by reason."""
        totals: Counter[str] = Counter()
        for report in self.files:
            totals.update(report.quarantined)
        return dict(sorted(totals.items()))

    @property
    def rows_read(self) -> int:
        """Rows read from the files normalized in this run."""
        return sum(report.rows_read for report in self.files)

    @property
    def rows_loaded(self) -> int:
        """Rows that passed validation in this run."""
        return sum(report.rows_loaded for report in self.files)

    @property
    def rows_quarantined(self) -> int:
        """Rows rejected in this run, all reasons together."""
        return sum(self.quarantined_by_reason.values())


@dataclass(frozen=True)
class _RawFile:
    path: Path
    rel: str
    load_date: date


def ingest_events(snapshot_dir: Path, *, store_dir: Path, through: date) -> IngestReport:
    """Normalize every new or changed raw events file with an arrival date on or before `through`.

    Args:
        snapshot_dir: the snapshot root, holding `events/date=YYYY-MM-DD/<files>`.
        store_dir: where normalized events, quarantined rows and the manifest live.
        through: the last arrival date to take; later partitions are left for a later run.

    Raises:
        SnapshotError: a file or folder breaks the contract; files before it in path order are already done.
    """
    raw_files = _raw_files(snapshot_dir, through=through)
    digests = {raw.rel: file_digest(raw.path) for raw in raw_files}
    manifest = load_manifest(store_dir)
    removed = sorted(rel for rel in manifest if rel not in digests and _load_date(rel) <= through)
    for rel in removed:
        for output in _outputs(store_dir, rel):
            output.unlink(missing_ok=True)
            if output.parent.is_dir() and not any(output.parent.iterdir()):
                output.parent.rmdir()
        del manifest[rel]
    save_manifest(store_dir, manifest)

    reports: list[FileReport] = []
    skipped: list[str] = []
    for raw in raw_files:
        loaded_path, quarantine_path = _outputs(store_dir, raw.rel)
        if manifest.get(raw.rel) == digests[raw.rel] and loaded_path.exists():
            skipped.append(raw.rel)
            continue
        result = normalize_file(raw.path, rel=raw.rel, load_date=raw.load_date)
        _write_parquet(result.loaded, loaded_path)
        if result.quarantined.height:
            _write_parquet(result.quarantined, quarantine_path)
        else:
            quarantine_path.unlink(missing_ok=True)
        manifest[raw.rel] = digests[raw.rel]
        save_manifest(store_dir, manifest)
        reasons = result.quarantined["reason"].value_counts(sort=True).rows()
        reports.append(
            FileReport(
                path=raw.rel,
                load_date=raw.load_date,
                rows_read=result.loaded.height + result.quarantined.height,
                rows_loaded=result.loaded.height,
                quarantined=dict(sorted(reasons)),
                properties_canonical=result.properties_canonical,
            )
        )
    return IngestReport(
        files=tuple(reports),
        skipped=tuple(skipped),
        removed=tuple(removed),
        fingerprint=fingerprint(digests.items()),
    )


def scan_events(store_dir: Path, *, as_of: datetime) -> pl.LazyFrame:
    """The normalized events that happened before `as_of` and had arrived by the end of its UTC day.

    Partitions after as_of's date are not opened, so a replay reads the same rows whenever it runs; an event
    that arrives more than a day late is therefore seen only by runs as of its arrival day or later.

    Args:
        store_dir: the store written by `ingest_events`.
        as_of: a timezone-aware instant; `ts < as_of` exactly.
    """
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    cutoff = as_of.astimezone(UTC)
    root = store_dir / EVENTS_DIR
    files = [
        file
        for day, folder in (partitions(root, base=store_dir) if root.exists() else [])
        if day <= cutoff.date()
        for file in sorted(folder.glob("*.parquet"))
        if not is_hidden(file)
    ]
    if not files:
        return pl.LazyFrame(schema=EVENT_SCHEMA)
    return pl.scan_parquet(files, schema=EVENT_SCHEMA, hive_partitioning=False).filter(
        pl.col("ts") < pl.lit(cutoff, dtype=EVENT_SCHEMA["ts"])
    )


def _raw_files(snapshot_dir: Path, *, through: date) -> list[_RawFile]:
    root = snapshot_dir / EVENTS_DIR
    if not root.is_dir():
        raise SnapshotError(f"{EVENTS_DIR}/: no events folder in the snapshot at {snapshot_dir} (NUDGE_SNAPSHOT_DIR)")
    found: list[_RawFile] = []
    for day, folder in partitions(root, base=snapshot_dir):
        if day > through:
            continue
        stems: dict[str, str] = {}
        for path in data_files(folder, base=snapshot_dir):
            rel = path.relative_to(snapshot_dir).as_posix()
            if path.stem in stems:
                raise SnapshotError(f"{rel}: same name as {stems[path.stem]}; both would load as {path.stem}")
            stems[path.stem] = rel
            found.append(_RawFile(path=path, rel=rel, load_date=day))
    return found


def _load_date(rel: str) -> date:
    day = partition_date(PurePosixPath(rel).parent.name)
    if day is None:
        raise SnapshotError(f"{rel}: manifest entry outside a date partition")
    return day


def _outputs(store_dir: Path, rel: str) -> tuple[Path, Path]:
    """Where a raw file's normalized rows and quarantined rows go."""
    name = f"{PurePosixPath(rel).stem}.parquet"
    folder = partition_name(_load_date(rel))
    return (
        store_dir / EVENTS_DIR / folder / name,
        store_dir / QUARANTINE_DIR / EVENTS_DIR / folder / name,
    )


def _write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """Write under a hidden name, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.write_parquet(tmp, statistics=True)
    os.replace(tmp, path)
