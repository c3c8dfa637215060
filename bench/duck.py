"""The DuckDB baseline: the same normalized Parquet files, the same instant, hand-written SQL per segment.

The session mirrors what the engine sees: `events` holds the rows of arrival partitions up to as_of's date with
`ts < as_of` (exactly `scan_events`), `users` is the normalized users file, and `as_of()` is a macro, so it is
folded into each query as a constant and DuckDB can push the `ts` filters into its Parquet reader. A segment
that references another reads `seg_<name>`, the temporary table of the referenced segment's answer.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import psutil

THREADS = 2


def connect(
    *, event_files: list[Path], users_file: Path, as_of: datetime, spill_dir: Path
) -> duckdb.DuckDBPyConnection:
    """An in-memory session with 2 threads and no memory cap below the machine's RAM (Polars has none)."""
    con = duckdb.connect()
    memory_gib = psutil.virtual_memory().total // 2**30
    con.execute(f"SET threads = {THREADS}")
    con.execute(f"SET memory_limit = '{memory_gib}GiB'")
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET temp_directory = {_quote(spill_dir.as_posix())}")
    stamp = as_of.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    con.execute(f"CREATE MACRO as_of() AS TIMESTAMPTZ '{stamp}'")
    files = ", ".join(_quote(path.as_posix()) for path in event_files)
    con.execute(
        "CREATE VIEW events AS SELECT user_id, event, ts "
        f"FROM read_parquet([{files}], hive_partitioning = false) WHERE ts < as_of()"
    )
    con.execute(f"CREATE VIEW users AS SELECT * FROM read_parquet({_quote(users_file.as_posix())})")
    return con


def run_segments(con: duckdb.DuckDBPyConnection, sql: dict[str, str], order: list[str]) -> dict[str, float]:
    """Materialize each segment as `seg_<name>` in dependency order; seconds per segment."""
    seconds: dict[str, float] = {}
    for name in order:
        began = time.perf_counter()
        con.execute(f"CREATE OR REPLACE TEMP TABLE seg_{name} AS {sql[name]}")
        seconds[name] = time.perf_counter() - began
    return seconds


def export(con: duckdb.DuckDBPyConnection, name: str, path: Path) -> None:
    """Write one answer to Parquet for the comparison with the engine (outside the timed part)."""
    con.execute(f"COPY (SELECT user_id FROM seg_{name}) TO {_quote(path.as_posix())} (FORMAT parquet)")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
