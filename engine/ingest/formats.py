"""The one place that knows how a raw snapshot file is read.

Text formats are read as text on purpose: a CSV or NDJSON file carries no trustworthy types, so every column
arrives as strings and the validators parse it, flagging each value that was present but did not parse. Parquet
keeps its own types, which the validators then check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl

from engine.contract import RAW_FORMATS, SnapshotError

RawFormat = Literal["parquet", "csv", "ndjson"]


def raw_format(path: Path, *, rel: str) -> RawFormat:
    """The reader for `path`, refusing anything the contract does not name."""
    fmt = RAW_FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(RAW_FORMATS))
        raise SnapshotError(f"{rel}: unknown file format {path.suffix!r} (expected one of {known})")
    return fmt


def scan_raw(path: Path, *, rel: str, ndjson_schema: pl.Schema | None = None) -> pl.LazyFrame:
    """A lazy scan of one raw file.

    Args:
        path: the file.
        rel: its path relative to the snapshot, used in error messages.
        ndjson_schema: for NDJSON, the columns to read and their types; None infers them from the whole file.
            Reading NDJSON with a schema of strings keeps one odd record from failing the file's inference.
    """
    fmt = raw_format(path, rel=rel)
    if fmt == "parquet":
        return pl.scan_parquet(path, hive_partitioning=False)
    if fmt == "csv":
        return pl.scan_csv(path, infer_schema=False)
    return pl.scan_ndjson(path, schema=ndjson_schema, infer_schema_length=None)


def raw_schema(frame: pl.LazyFrame, *, rel: str) -> pl.Schema:
    """The columns of a raw scan, turning a file Polars cannot read at all into a SnapshotError."""
    try:
        return frame.collect_schema()
    except pl.exceptions.PolarsError as exc:
        raise SnapshotError(f"{rel}: unreadable: {exc}") from exc
