"""Segment recompute benchmark (issue 3): the engine against a scan floor, DuckDB and its own incremental day.

    .venv/bin/python -m bench.segments --events 10M [--users N] [--repeat N] [--keep-data]

One run prepares the data (cached under `bench/.cache/`), then runs each phase in its own process: the Polars
scan floor, the engine's full recompute of every segment in `bench/segments/`, the same segments as DuckDB SQL
from `bench/sql/` (each answer must equal the engine's, ids and all), and one incremental day. It prints what
each took, the engine's peak memory, and the ratios against the targets. Exit status 1 when any answer differs:
a benchmark comparing different answers is worthless. Timings are for reading, never asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from bench.definitions import load_segments, load_sql, ordered_names
from bench.phases import Spec
from bench.report import Target, count, ratio, seconds, size, table
from bench.timing import child_result
from bench.workload import REPO_ROOT, Workload, parse_count, plan_workload

RSS_TARGET_EVENTS = 50_000_000


@dataclass(frozen=True)
class Comparison:
    """One segment's engine answer against another answer of the same question."""

    name: str
    engine: int
    other: int
    equal: bool


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.segments", description=__doc__.splitlines()[0])
    parser.add_argument("--events", required=True, help="events to generate: 1M, 10M, 50M, 100M or any count")
    parser.add_argument(
        "--users", type=int, default=None, help="population (default: 1M from 10M events, else events/10)"
    )
    parser.add_argument("--seed", type=int, default=7, help="the generator's seed")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of the floor, engine and DuckDB; best kept")
    parser.add_argument("--keep-data", action="store_true", help="keep bench/.cache/<workload>/ for the next run")
    return parser.parse_args(argv)


def run_phase(spec: Spec) -> dict[str, Any]:
    """Run one phase in a fresh interpreter and return what it printed (its last line, as JSON)."""
    print(f"... {spec.phase} ({spec.at}, {spec.store})", file=sys.stderr, flush=True)
    return child_result("bench.phases", [spec.to_json()], REPO_ROOT)


def compare(engine_dir: Path, other_dir: Path, names: list[str]) -> list[Comparison]:
    """Per segment: both sizes, and whether the two answers hold exactly the same user ids."""
    rows = []
    for name in names:
        mine = pl.read_parquet(engine_dir / f"{name}.parquet").get_column("user_id").sort()
        theirs = pl.read_parquet(other_dir / f"{name}.parquet").get_column("user_id").sort()
        rows.append(Comparison(name, mine.len(), theirs.len(), mine.equals(theirs)))
    return rows


def header(workload: Workload, segments: int, repeat: int, loads: tuple[float, float]) -> str:
    """What was measured, and the load average around the run: above ~2 something else shared the cores."""
    stamp = "%Y-%m-%dT%H:%MZ"
    return (
        f"nudge segments benchmark: {count(workload.events)} events requested -> {workload.users:,} users x "
        f"{workload.days} days (+1 incremental day), seed {workload.seed}\n"
        f"as_of {workload.as_of.strftime(stamp)} (incremental: {workload.next_as_of.strftime(stamp)}), "
        f"{segments} segments, {os.cpu_count()} cores, best of {repeat} for floor/engine/DuckDB, "
        f"1-min load average {loads[0]:.1f} at start, {loads[1]:.1f} at end"
    )


def phase_table(
    data: dict[str, Any],
    floor: dict[str, Any],
    engine: dict[str, Any],
    duck: dict[str, Any],
    incremental: dict[str, Any],
    checks: tuple[list[Comparison], list[Comparison], list[Comparison]],
) -> str:
    cached = " [cached: timings of the run that prepared it]" if data["cached"] else ""
    agree, agree_next, agree_full = (sum(row.equal for row in rows) for rows in checks)
    total = len(checks[0])
    warm = incremental["warm_days"]

    def times(result: dict[str, Any], prefix: str = "") -> list[str]:
        return [seconds(result.get(f"{prefix}seconds")), seconds(result.get(f"{prefix}cpu_seconds"))]

    rows = [
        ["1 data", "generate (engine.sample) + age attribute", *times(data, "generate_"), size(data["peak_rss"]),
         f"{count(data['generated_events'])} events incl. the incremental day{cached}"],
        ["1 data", "ingest_events through as_of's day", *times(data, "ingest_"), "",
         f"{count(data['ingested_rows'])} rows, {data['quarantined_rows']} quarantined, "
         f"{data['event_partitions']} partitions"],
        ["1 data", "update_rollups (every partition)", *times(data, "rollup_"), "",
         f"{data['rollup_partitions']} partitions"],
        ["1 data", "normalized events on disk", "", "", "",
         f"{size(data['events_bytes'])} Parquet (rollups {size(data['rollups_bytes'])}, "
         f"users {size(data['users_bytes'])})"],
        ["2 floor", "Polars scan of user_id, event, ts, value", *times(floor), size(floor["peak_rss"]),
         f"{count(floor['rows'])} rows with ts < as_of, {count(int(floor['rows'] / floor['seconds']))} rows/s"],
        ["3 engine", f"compute_memberships, {total} segments", *times(engine), size(engine["peak_rss"]),
         f"RSS {size(engine['start_rss'])} before"],
        ["4 duckdb", f"{total} SQL queries, 2 threads", *times(duck), size(duck["peak_rss"]),
         f"{agree}/{total} answers equal to the engine's"],
        ["5 incr", f"state chain, untimed: full at as_of - {warm}d", *times(incremental, "bootstrap_"), "",
         f"then {warm} daily runs to as_of, {seconds(incremental['warm_mean_seconds'])} s each "
         f"(first {seconds(incremental['warm_first_seconds'])} s: no interval recorded yet)"],
        ["5 incr", "ingest_events (the new day; not in total)", *times(incremental, "ingest_"), "",
         f"{count(incremental['rows_loaded'])} rows, {incremental['files_ingested']} file"],
        ["5 incr", "update_rollups (the new partition only)", *times(incremental, "rollup_"), "", ""],
        ["5 incr", "advance state, memberships at as_of + 1d", *times(incremental, "segment_"), "",
         f"leaving intervals: {incremental['leaving_from_buckets']} recorded, {incremental['leaving_raw']} raw; "
         f"{incremental['recomputed_users']:,} users recomputed"],
        ["5 incr", "total: fold + segments", *times(incremental), size(incremental["peak_rss"]),
         f"{agree_full}/{total} equal to a full recompute at as_of + 1d, {agree_next}/{total} to DuckDB's"],
    ]  # fmt: skip
    return table(["line", "what", "wall s", "cpu s", "peak RSS", "notes"], rows, right=(2, 3, 4))


def targets(workload: Workload, data: dict[str, Any], floor: dict[str, Any], engine: dict[str, Any],
            duck: dict[str, Any], incremental: dict[str, Any]) -> list[Target]:  # fmt: skip
    def both(name: str, top: dict[str, Any], bottom: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        wall = top[f"{prefix}seconds"] / bottom["seconds"]
        return {"name": name, "value": wall, "cpu_value": top[f"{prefix}cpu_seconds"] / bottom["cpu_seconds"]}

    rss_note = "< 2" if workload.events >= RSS_TARGET_EVENTS else "< 2 (target at 50M)"
    with_ingest = {
        "seconds": incremental["seconds"] + incremental["ingest_seconds"],
        "cpu_seconds": incremental["cpu_seconds"] + incremental["ingest_cpu_seconds"],
    }
    return [
        Target(**both("engine / duckdb", engine, duck), upper=1.0, shown="< 1.0"),
        Target(**both("engine / scan floor", engine, floor), upper=8.0, shown="<= 8", inclusive=True),
        Target(**both("incremental day (fold + segments) / full", incremental, engine), upper=1 / 15,
               shown="< 0.067"),
        Target(**both("  segments part only / full", incremental, engine, "segment_"), upper=1 / 15,
               shown="< 0.067"),
        Target(**both("  with ingesting the day too / full", with_ingest, engine), upper=None, shown="(info)"),
        Target("engine peak RSS / events Parquet", engine["peak_rss"] / data["events_bytes"], 2.0, rss_note),
    ]  # fmt: skip


def target_table(rows: list[Target]) -> str:
    body = [
        [row.name, ratio(row.value), "" if row.cpu_value is None else ratio(row.cpu_value), row.shown,
         "" if row.upper is None else "yes" if row.met else "NO"]
        for row in rows
    ]  # fmt: skip
    return table(["ratio", "wall", "cpu", "target", "met (wall)"], body, right=(1, 2))


def segment_table(checks: tuple[list[Comparison], list[Comparison], list[Comparison]], duck: dict[str, Any]) -> str:
    now, later, full = checks
    body = [
        [row.name, f"{row.engine:,}", f"{row.other:,}", seconds(duck["per_segment"][row.name]),
         "yes" if row.equal else "NO", f"{nxt.engine:,}", "yes" if nxt.equal else "NO",
         "yes" if whole.equal else "NO"]
        for row, nxt, whole in sorted(zip(now, later, full, strict=True), key=lambda rows: rows[0].name)
    ]  # fmt: skip
    headers = ["segment", "engine", "duckdb", "duckdb s", "equal", "incr +1d", "= duckdb", "= full"]
    return table(headers, body, right=(1, 2, 3))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workload = plan_workload(parse_count(args.events), args.users, args.seed)
    names = ordered_names(load_segments())
    load_sql(names)  # refuse a segment without its SQL before spending minutes on data
    shutil.rmtree(workload.run_dir, ignore_errors=True)
    load_at_start = os.getloadavg()[0]
    try:
        data = run_phase(Spec("prepare", workload))
        floor = run_phase(Spec("floor", workload, args.repeat))
        engine = run_phase(Spec("engine", workload, args.repeat, out="run/engine"))
        duck = run_phase(Spec("duckdb", workload, args.repeat, out="run/duckdb"))
        nxt = {"store": "run/store-next", "at": "next_as_of"}
        incremental = run_phase(Spec("incremental", workload, out="run/incremental", **nxt))
        run_phase(Spec("duckdb", workload, out="run/duckdb-next", **nxt))
        checks = (
            compare(workload.run_dir / "engine", workload.run_dir / "duckdb", names),
            compare(workload.run_dir / "incremental", workload.run_dir / "duckdb-next", names),
            compare(workload.run_dir / "incremental", workload.run_dir / "incremental-full", names),
        )
    finally:
        shutil.rmtree(workload.run_dir, ignore_errors=True)
        if not args.keep_data:
            shutil.rmtree(workload.folder, ignore_errors=True)
    sys.stderr.flush()
    print(header(workload, len(names), args.repeat, (load_at_start, os.getloadavg()[0])), end="\n\n")
    print(phase_table(data, floor, engine, duck, incremental, checks), end="\n\n")
    print(target_table(targets(workload, data, floor, engine, duck, incremental)), end="\n\n")
    print(segment_table(checks, duck))
    equal = all(row.equal for rows in checks for row in rows)
    if not equal:
        print("\nANSWERS DIFFER: the timings above compare different work and mean nothing.")
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
