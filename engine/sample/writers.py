"""Writing sample tables in each snapshot format exactly as the input contract describes them.

Text formats get explicit encodings rather than Polars' defaults: ISO-8601 timestamps with `Z`, NDJSON
properties as JSON objects (not strings holding JSON), CSV push tokens as a JSON array string. The point of the
sample is to exercise the loaders the way a producer's export would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import polars as pl

SampleFormat = Literal["parquet", "csv", "ndjson"]
EXTENSIONS: dict[SampleFormat, str] = {"parquet": "parquet", "csv": "csv", "ndjson": "ndjson"}
_ISO_MS = "%Y-%m-%dT%H:%M:%S%.3fZ"


def write_events(frame: pl.DataFrame, path: Path, fmt: SampleFormat) -> None:
    """Write events (user_id, event, ts, value, properties) in `fmt`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        frame.write_parquet(path)
    elif fmt == "csv":
        frame.with_columns(pl.col("ts").dt.to_string(_ISO_MS)).write_csv(path)
    else:
        head = (
            pl.struct("user_id", "event", pl.col("ts").dt.to_string(_ISO_MS), "value").struct.json_encode().str.head(-1)
        )
        properties = pl.when(pl.col("properties").is_not_null()).then(pl.format(',"properties":{}', "properties"))
        line = pl.concat_str(head, properties, pl.lit("}"), ignore_nulls=True)
        _write_lines(frame.select(line.alias("line")), path)


def write_users(frame: pl.DataFrame, path: Path, fmt: SampleFormat) -> None:
    """Write users (the contract's columns plus free attributes) in `fmt`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        frame.write_parquet(path)
        return
    stamped = frame.with_columns(pl.col("signed_up_at").dt.to_string(_ISO_MS))
    if fmt == "csv":
        tokens = pl.struct(pl.col("push_tokens").alias("t")).struct.json_encode().str.slice(5).str.head(-1)
        stamped.with_columns(tokens.alias("push_tokens")).write_csv(path)
    else:
        _write_lines(stamped.select(pl.struct(pl.all()).struct.json_encode().alias("line")), path)


def _write_lines(lines: pl.DataFrame, path: Path) -> None:
    """One text column written verbatim, one row per line (CSV writing with quoting off does exactly that)."""
    lines.write_csv(path, include_header=False, quote_style="never")
