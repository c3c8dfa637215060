"""The floors of the full-day scenario's stages, measured in a process of their own after the timed run.

`python -m bench.day_floors SPEC_JSON` prints one JSON line with, for each stage, the least work any engine
doing that stage must do on the same data, best of `repeat`:

- ingest: reading every column of the new day's raw files and the users file (validation reads all of them);
- segments: reading the four columns a segment reads (user, event, time, value) of every event visible at
  as_of, with one cheap aggregate per column, as `bench.segments` measures its floor;
- journeys: the instances active when the run started, left-joined on user with the events that arrived since
  the previous run: the join no journey engine can avoid;
- dispatch: building the contexts of, and rendering, exactly the messages the run sent, with dispatch's own
  `render_rows`.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from datetime import datetime
from pathlib import Path

import polars as pl

from bench.timing import Timing, best_of
from engine.behaviour import Behaviour
from engine.contract import EVENTS_DIR, USERS_DIR, partition_name
from engine.dispatch import render_rows
from engine.ingest import load_users, scan_events
from engine.render import TemplateStore
from engine.rollups import scan_rollups


def ingest_floor(snapshot: Path, day: datetime, repeat: int) -> Timing:
    files = sorted((snapshot / EVENTS_DIR / partition_name(day.date())).glob("*.parquet"))
    users = sorted((snapshot / USERS_DIR).glob("*.parquet"))
    timing, _ = best_of(repeat, lambda: [pl.read_parquet(path) for path in [*files, *users]])
    return timing


def segments_floor(store_dir: Path, as_of: datetime, repeat: int) -> Timing:
    scan = scan_events(store_dir, as_of=as_of).select(
        pl.len(),
        pl.col("user_id").str.len_bytes().sum(),
        pl.col("event").str.len_bytes().sum(),
        pl.col("ts").max(),
        pl.col("value").sum(),
    )
    timing, _ = best_of(repeat, scan.collect)
    return timing


def journeys_floor(database: Path, store_dir: Path, since: datetime, as_of: datetime, repeat: int) -> Timing:
    with sqlite3.connect(database) as connection:
        instances = pl.read_database(
            "SELECT journey, user_id, instance_id, node, due_at FROM journey_instance WHERE status = 'active'",
            connection,
        )
    events = (
        scan_events(store_dir, as_of=as_of)
        .filter(pl.col("ts") >= since)
        .select("user_id", "event", "ts", "value")
        .collect()
    )
    timing, _ = best_of(repeat, lambda: instances.lazy().join(events.lazy(), on="user_id", how="left").collect())
    return timing


def dispatch_floor(
    before: Path, after: Path, snapshot: Path, store_dir: Path, as_of: datetime, templates: Path, repeat: int
) -> tuple[Timing, int]:
    """Contexts and rendering of the messages accepted by the timed run (accepted after it, not before)."""
    query = "SELECT send_key, user_id, journey, template, recipient, channel FROM outbox WHERE status = 'accepted'"
    with sqlite3.connect(before) as connection:
        earlier = pl.read_database(query, connection).get_column("send_key")
    with sqlite3.connect(after) as connection:
        sent = pl.read_database(query, connection).filter(~pl.col("send_key").is_in(earlier.implode()))
    users = load_users(snapshot, as_of=as_of).users.lazy()
    store = TemplateStore(templates)

    def render_all() -> int:
        # A Behaviour per call: what it derives once per run (last carts) is part of the work measured.
        behaviour = Behaviour(
            as_of, scan_events(store_dir, as_of=as_of), scan_rollups(store_dir, through_day=as_of.date())
        )
        rendered = 0
        for (channel,), rows in sent.group_by("channel", maintain_order=True):
            messages, failures = render_rows(rows.drop("channel"), str(channel), "floor", behaviour, users, store)
            if failures:
                raise RuntimeError(f"{len(failures)} {channel} messages the run sent do not render: {failures[0]}")
            rendered += len(messages)
        return rendered

    timing, rendered = best_of(repeat, render_all)
    return timing, rendered


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    as_of, since = datetime.fromisoformat(spec["as_of"]), datetime.fromisoformat(spec["since"])
    snapshot, store_dir, repeat = Path(spec["snapshot"]), Path(spec["store"]), spec["repeat"]
    dispatching, rendered = dispatch_floor(
        Path(spec["database_before"]), Path(spec["database_after"]), snapshot, store_dir, as_of,
        Path(spec["templates"]), repeat,
    )  # fmt: skip
    floors = {
        "ingest": ingest_floor(snapshot, as_of, repeat),
        "segments": segments_floor(store_dir, as_of, repeat),
        "journeys": journeys_floor(Path(spec["database_before"]), store_dir, since, as_of, repeat),
        "dispatch": dispatching,
    }
    print(json.dumps({name: vars(timing) for name, timing in floors.items()} | {"rendered": rendered}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
