"""Journeys benchmark (issue 4): one run's transitions against a plain Polars join, and their persistence.

    .venv/bin/python -m bench.journeys [--instances 1M|10M] [--repeat N] [--seed N] [--keep-data]

One run generates N active instances of `JOURNEY` (every node kind: delay, wait-for with timeout, branch,
split, send, exit, and a goal), resting at its three waits as a daily deployment leaves them, plus the users
and the last days' events its waits, branch and goal read. Each phase then runs in its own process (so a peak
RSS is that phase's alone), over the same tables, held in memory as Polars frames:

1. baseline: the instances joined with the events the run reads (a plain left join on `user_id`), materialized;
2. engine: `engine.journeys.run_journey` for one run (entries and transitions, no database), then, for
   information, `engine.outbox.plan_outbox` of the sends it planned;
3. persistence: `engine.journey_store.save_step` of what line 2 changed (instances, transitions, outbox rows)
   into a fresh SQLite file, in one transaction, as `engine.pipeline.record_journey_steps` does.

Line 2's answer is checked against an independent reference (which instances leave their wait, which by the
goal) and line 3's against the rows in the file; any difference makes the run exit with status 1. Timings are
for reading, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psutil
import yaml
from sqlalchemy import func, select

from bench.report import count, ratio, seconds, size, table
from bench.timing import best_of, child_result, timed
from bench.workload import CACHE_DIR, REPO_ROOT, parse_count
from engine.behaviour import Behaviour
from engine.db import connect
from engine.journey_state import KNOWN_SCHEMA, SEND_SCHEMA, Advance
from engine.journey_store import save_step
from engine.journeys import run_journey
from engine.keys import text_key
from engine.outbox import plan_outbox
from engine.rollups import rollup_events
from models.journeys import JourneyDefinition
from models.tables import JourneyInstance, JourneyTransition, OutboxMessage

JOURNEY = """
name: bench_cart
status: active
entry: {segment: cart_abandoners}
goal: {event: purchase, within: 7d}
holdout: 10
start: settle
nodes:
  settle: {delay: 1d, next: came_back}
  came_back:
    wait_for: {event: app_open}
    timeout: 2d
    matched: engaged
    timed_out: channel_test
  engaged:
    branch:
      - when: {performed: {event: view_item, within: {since: entry}, at_least: 2}}
        next: email_reminder
    otherwise: channel_test
  channel_test:
    split:
      - {arm: email, weight: 50, next: email_reminder}
      - {arm: push, weight: 50, next: push_reminder}
  email_reminder: {send: {channel: email, template: cart_reminder}, next: cool_off}
  push_reminder: {send: {channel: push, template: cart_push}, next: cool_off}
  cool_off: {delay: 2d, next: finished}
  finished: {exit: completed}
"""
VERSION = text_key(JOURNEY)[:16]
AS_OF = datetime(2026, 9, 10, 6, tzinfo=UTC)
RUN_ID = "bench-journeys"
DAY = timedelta(days=1)


@dataclass(frozen=True)
class Rest:
    """Where a share of the instances waits: at `node` since `arrived` days (daily runs), entered `entered` days
    ago, after `steps` steps, due `wait` days after arrival."""

    node: str
    arrived: int
    entered: int
    steps: int
    wait: int
    share: float


RESTING = (
    Rest("settle", arrived=1, entered=1, steps=0, wait=1, share=0.30),  # due now: all move
    Rest("came_back", arrived=1, entered=2, steps=1, wait=2, share=0.20),  # move if an app_open came
    Rest("came_back", arrived=2, entered=3, steps=1, wait=2, share=0.20),  # time out now unless matched
    Rest("cool_off", arrived=1, entered=4, steps=4, wait=2, share=0.15),  # not due
    Rest("cool_off", arrived=2, entered=5, steps=4, wait=2, share=0.15),  # due now: exit
)
ENTERING_SHARE = 0.02  # new users entering this run, as a share of the active instances
HISTORY_DAYS = 6  # events in [as_of - 6d, as_of): the oldest instance entered 5 days ago
EVENT_RATES = {"app_open": 0.35, "view_item": 0.3, "add_to_cart": 0.1, "purchase": 0.015}  # per user per day
READ_EVENTS = ("app_open", "view_item", "purchase")  # what the wait, the branch and the goal read
TIMEZONES = ("UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo")
TRANSITIONS_TARGET = 3.0  # engine / baseline, inclusive
PERSIST_TARGET = 15.0  # seconds for 1M changed instances, exclusive
PERSIST_TARGET_INSTANCES = 1_000_000
TABLES = {"instances": JourneyInstance, "transitions": JourneyTransition, "outbox": OutboxMessage}


def journey() -> JourneyDefinition:
    return JourneyDefinition.model_validate(yaml.safe_load(JOURNEY))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.journeys", description=__doc__.splitlines()[0])
    parser.add_argument("--instances", default="1M", help="active instances: 1M (default), 10M or any count")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of the baseline and the engine; best kept")
    parser.add_argument("--seed", type=int, default=7, help="the generator's seed")
    parser.add_argument("--keep-data", action="store_true", help="keep bench/.cache/journeys-*/ for the next run")
    parser.add_argument("--phase", help=argparse.SUPPRESS)  # set by the parent for a phase's own process
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- the workload -------------------------------------------------------------------------------------------


def user_ids(first: int, stop: int) -> pl.Series:
    return pl.select(pl.format("user-{}", pl.int_range(first, stop).cast(pl.String).str.zfill(9))).to_series()


def build_instances(instances: int, rng: np.random.Generator) -> pl.DataFrame:
    """`instances` active instances, one per user, spread over `RESTING`; ids are 32-character hashes like the
    engine's (their order unrelated to the users')."""
    rests = pl.DataFrame([rest.__dict__ for rest in RESTING]).with_row_index("rest")
    shares = rests.get_column("share").to_numpy()
    placed = pl.DataFrame(
        {
            "user_id": user_ids(0, instances),
            "rest": rng.choice(len(RESTING), size=instances, p=shares / shares.sum()).astype(np.uint32),
            "_draw": rng.random(instances),
        }
    ).join(rests, on="rest", how="left")
    as_of = pl.lit(AS_OF).dt.cast_time_unit("us")
    ids = pl.int_range(pl.len(), dtype=pl.UInt64)
    return placed.select(
        pl.concat_str(ids.hash(1).cast(pl.String), ids.hash(2).cast(pl.String)).str.slice(0, 32).alias("instance_id"),
        pl.lit("bench_cart").alias("journey"),
        pl.lit(VERSION).alias("version"),
        "user_id",
        pl.lit(None, pl.String).alias("entry_key"),
        (as_of - pl.duration(days=pl.col("entered"))).alias("entered_at"),
        "node",
        (as_of - pl.duration(days=pl.col("arrived"))).alias("node_entered_at"),
        (as_of - pl.duration(days=pl.col("arrived") - pl.col("wait"))).alias("due_at"),
        pl.lit("active").alias("status"),
        pl.lit(None, pl.String).alias("exit_reason"),
        pl.col("steps").cast(pl.Int64),
        (pl.col("_draw") < 0.1).alias("holdout"),
        pl.when(pl.col("node") == "cool_off")
        .then(pl.when(pl.col("_draw") < 0.55).then(pl.lit("email")).otherwise(pl.lit("push")))
        .alias("arm"),
        pl.lit(None, pl.Datetime("us", "UTC")).alias("goal_at"),
    )


def build_events(population: int, rng: np.random.Generator) -> pl.DataFrame:
    """Every user's events of the last `HISTORY_DAYS` days, Poisson counts at `EVENT_RATES`, sorted by time."""
    parts = []
    span = HISTORY_DAYS * DAY // timedelta(microseconds=1)
    for name, rate in EVENT_RATES.items():
        counts = rng.poisson(rate * HISTORY_DAYS, size=population)
        owners = np.repeat(np.arange(population), counts)
        back = rng.integers(1, span, size=owners.size)  # strictly before as_of
        parts.append(
            pl.DataFrame({"_owner": owners, "_back": back}).select(
                pl.format("user-{}", pl.col("_owner").cast(pl.String).str.zfill(9)).alias("user_id"),
                pl.lit(name).alias("event"),
                (pl.lit(AS_OF).dt.cast_time_unit("us") - pl.duration(microseconds=pl.col("_back"))).alias("ts"),
                (pl.lit(40.0) if name == "purchase" else pl.lit(None, pl.Float64)).alias("value"),
                pl.lit(None, pl.String).alias("properties"),
            )
        )
    return pl.concat(parts).with_columns(pl.col("ts").dt.date().alias("load_date")).sort("ts")


def build_users(population: int, rng: np.random.Generator) -> pl.DataFrame:
    """The users snapshot's standard columns: addresses, tokens (70% of users), consents, time zones."""
    ids = user_ids(0, population)
    return pl.DataFrame(
        {
            "user_id": ids,
            "_token": rng.random(population) < 0.7,
            "timezone": pl.Series(TIMEZONES)[rng.integers(0, len(TIMEZONES), size=population)],
            "email_consent": rng.random(population) < 0.9,
            "push_consent": rng.random(population) < 0.8,
        }
    ).select(
        "user_id",
        (pl.col("user_id") + "@example.com").alias("email"),
        pl.when("_token").then(pl.concat_list("fcm-" + pl.col("user_id"))).alias("push_tokens"),
        "timezone",
        pl.lit("en").alias("locale"),
        pl.lit("US").alias("country"),
        "email_consent",
        "push_consent",
        pl.lit(AS_OF - 400 * DAY).dt.cast_time_unit("us").alias("signed_up_at"),
    )


def phase_prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Generate the workload and write it as Parquet (the phases read it back before their clocks start)."""
    rng = np.random.default_rng(args.seed)
    instances = parse_count(args.instances)
    entering = int(instances * ENTERING_SHARE)
    population = instances + entering
    frames = {
        "instances": build_instances(instances, rng),
        "events": build_events(population, rng),
        "users": build_users(population, rng),
        "entering": user_ids(instances, population).to_frame("user_id"),
    }
    frames["rollups"] = rollup_events(frames["events"].lazy()).filter(pl.col("day") < AS_OF.date()).collect()
    for name, frame in frames.items():
        frame.write_parquet(args.folder / f"{name}.parquet")
    return {
        "instances": instances,
        "entering": entering,
        "events": frames["events"].height,
        "read_events": frames["events"].filter(pl.col("event").is_in(READ_EVENTS)).height,
        "at_node": dict(frames["instances"].group_by("node").len().iter_rows()),
    }


def read(folder: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(folder / f"{name}.parquet")


# --- the phases ---------------------------------------------------------------------------------------------


def phase_baseline(args: argparse.Namespace) -> dict[str, Any]:
    """The instances with every event of theirs the run reads: the join no journey engine can avoid."""
    instances, events = read(args.folder, "instances"), read(args.folder, "events")
    loaded = psutil.Process().memory_info().rss

    def join() -> pl.DataFrame:
        needed = events.lazy().filter(pl.col("event").is_in(READ_EVENTS)).select("user_id", "event", "ts", "value")
        return instances.lazy().join(needed, on="user_id", how="left").collect()

    timing, joined = best_of(args.repeat, join)
    return {**timing.fields(), "rows": joined.height, "loaded_rss": loaded}


def phase_engine(args: argparse.Namespace) -> dict[str, Any]:
    """One run of the journey over the instances, then the outbox rows of its sends; both written for line 3."""
    folder = args.folder
    definition = journey()
    active, users = read(folder, "instances"), read(folder, "users").lazy()
    entering = read(folder, "entering").get_column("user_id")
    events = read(folder, "events")
    behaviour = Behaviour(as_of=AS_OF, events=events.lazy(), rollups=read(folder, "rollups").lazy())
    members = {"cart_abandoners": pl.concat([active.get_column("user_id"), entering])}
    loaded = psutil.Process().memory_info().rss

    def run() -> tuple[pl.DataFrame, Advance]:
        return run_journey(
            definition,
            VERSION,
            entered=entering,
            known=active.select(KNOWN_SCHEMA.names()),
            active=active,
            users=users,
            behaviour=behaviour,
            memberships=members,
        )

    timing, (new, result) = best_of(args.repeat, run)
    planning, outbox = timed(lambda: plan_outbox(result.sends, users, run_id=RUN_ID, as_of=AS_OF))
    result.instances.write_parquet(folder / "changed.parquet")
    result.transitions.write_parquet(folder / "transitions.parquet")
    outbox.write_parquet(folder / "outbox.parquet")
    moved = result.instances.join(new.select("instance_id"), on="instance_id", how="anti")
    problems = check_moves(moved, active, events)
    if new.height != entering.len():
        problems.append(f"{new.height:,} instances entered, not the {entering.len():,} users who entered the segment")
    return {
        **timing.fields(),
        **planning.fields("outbox_"),
        "loaded_rss": loaded,
        "entered": new.height,
        "moved": moved.height,
        "changed": result.instances.height,
        "transitions": result.transitions.height,
        "sends": result.sends.height,
        "outbox": outbox.height,
        "exits": dict(result.instances.filter(pl.col("status") == "exited").group_by("exit_reason").len().iter_rows()),
        "problems": problems,
    }


def expected_moves(active: pl.DataFrame, events: pl.DataFrame) -> tuple[set[str], set[str]]:
    """Which instances leave their wait at this run, and which of them by the goal, straight from the journey's
    meaning: a purchase after entry (within 7d) ends any instance; otherwise a due wait ends, and the wait for
    app_open ends early when one came after arrival. Written without the engine's code."""
    ts = events.filter(pl.col("ts") < AS_OF)
    purchases = ts.filter(pl.col("event") == "purchase").select("user_id", "ts")
    bought = (
        active.join(purchases, on="user_id")
        .filter(pl.col("ts") > pl.col("entered_at"), pl.col("ts") < pl.col("entered_at") + pl.duration(days=7))
        .get_column("instance_id")
    )
    opens = ts.filter(pl.col("event") == "app_open").select("user_id", "ts")
    came = (
        active.filter(pl.col("node") == "came_back")
        .join(opens, on="user_id")
        .filter(pl.col("ts") > pl.col("node_entered_at"), pl.col("ts") < pl.col("due_at"))
        .get_column("instance_id")
    )
    due = active.filter(pl.col("due_at") <= AS_OF).get_column("instance_id")
    return set(bought) | set(came) | set(due), set(bought)


def check_moves(moved: pl.DataFrame, active: pl.DataFrame, events: pl.DataFrame) -> list[str]:
    """The engine's moved instances and goal exits against `expected_moves`; a description of each difference."""
    expected, goals = expected_moves(active, events)
    got = set(moved.get_column("instance_id"))
    got_goals = set(moved.filter(pl.col("exit_reason") == "goal").get_column("instance_id"))
    problems = []
    if got != expected:
        problems.append(f"moved: {len(got - expected):,} unexpected, {len(expected - got):,} missing")
    if got_goals != goals:
        problems.append(f"goal exits: {len(got_goals - goals):,} unexpected, {len(goals - got_goals):,} missing")
    return problems


def phase_persist(args: argparse.Namespace) -> dict[str, Any]:
    """`save_step` of line 2's result into a fresh SQLite file, in one transaction (tables created untimed).

    Timed once whatever `--repeat` says: a second save into the same file would be a rerun, not the same work.
    """
    folder = args.folder
    changed, transitions, outbox = read(folder, "changed"), read(folder, "transitions"), read(folder, "outbox")
    result = Advance(instances=changed, transitions=transitions, sends=pl.DataFrame(schema=SEND_SCHEMA))
    file = folder / "journeys.db"
    for leftover in folder.glob("journeys.db*"):
        leftover.unlink()
    database = connect(f"sqlite:///{file}")
    loaded = psutil.Process().memory_info().rss

    def save() -> int:
        with database.begin() as conn:
            return save_step(conn, result=result, outbox=outbox, run_id=RUN_ID)

    timing, added = timed(save)
    with database.connect() as conn:
        stored = {
            name: conn.execute(select(func.count()).select_from(model.__table__)).scalar_one()
            for name, model in TABLES.items()
        }  # type: ignore[attr-defined]
    written = {"instances": changed.height, "transitions": transitions.height, "outbox": outbox.height}
    problems = [
        f"{name}: {stored[name]:,} rows stored, {n:,} written" for name, n in written.items() if stored[name] != n
    ]
    if added != outbox.height:
        problems.append(f"save_step reported {added:,} outbox rows added, not {outbox.height:,}")
    database.dispose()
    return {
        **timing.fields(),
        "loaded_rss": loaded,
        "stored": stored,
        "file_bytes": file.stat().st_size,
        "problems": problems,
    }


PHASES = {"prepare": phase_prepare, "baseline": phase_baseline, "engine": phase_engine, "persist": phase_persist}


def run_phase(phase: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Run one phase in a fresh interpreter and return what it printed (its last line, as JSON)."""
    print(f"... {phase}", file=sys.stderr, flush=True)
    passed = ["--instances", args.instances, "--seed", str(args.seed), "--repeat", str(args.repeat)]
    return child_result("bench.journeys", ["--phase", phase, "--folder", str(folder), *passed], REPO_ROOT)


def phase_main(args: argparse.Namespace) -> None:
    start_rss = psutil.Process().memory_info().rss
    result = PHASES[args.phase](args)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    print(json.dumps({**result, "start_rss": start_rss, "peak_rss": peak_rss}))


# --- the report ---------------------------------------------------------------------------------------------


def header(data: dict[str, Any], args: argparse.Namespace, loads: tuple[float, float]) -> str:
    nodes = ", ".join(f"{node} {count(n)}" for node, n in sorted(data["at_node"].items()))
    return (
        f"nudge journeys benchmark: {count(data['instances'])} active instances of bench_cart ({nodes}) "
        f"+ {count(data['entering'])} entering, {count(data['events'])} events over {HISTORY_DAYS} days "
        f"({count(data['read_events'])} of the kinds the run reads), seed {args.seed}\n"
        f"as_of {AS_OF:%Y-%m-%dT%H:%MZ}, {os.cpu_count()} cores, best of {args.repeat} for baseline/engine, "
        f"1-min load average {loads[0]:.1f} at start, {loads[1]:.1f} at end (above ~2, something else was running)"
    )


def phase_table(data: dict[str, Any], base: dict[str, Any], engine: dict[str, Any], persist: dict[str, Any]) -> str:
    def times(result: dict[str, Any], prefix: str = "") -> list[str]:
        return [seconds(result[f"{prefix}seconds"]), seconds(result[f"{prefix}cpu_seconds"])]

    exits = ", ".join(f"{reason} {count(n)}" for reason, n in sorted(engine["exits"].items()))
    stored = persist["stored"]
    rows = [
        ["0 data", "generate the workload (not timed)", "", "", "",
         f"{count(data['instances'] + data['entering'])} users, rollups of whole days"],
        ["1 baseline", "instances LEFT JOIN the events read, collected", *times(base), size(base["peak_rss"]),
         f"{count(base['rows'])} rows; RSS {size(base['loaded_rss'])} with the tables loaded"],
        ["2 engine", "run_journey: entries + transitions", *times(engine), size(engine["peak_rss"]),
         f"{count(engine['moved'])} of {count(data['instances'])} moved "
         f"({engine['moved'] / data['instances']:.0%}), {count(engine['entered'])} entered, "
         f"{count(engine['transitions'])} transitions, {count(engine['sends'])} sends; exits: {exits}; "
         f"RSS {size(engine['loaded_rss'])} loaded"],
        ["2 engine", "plan_outbox of the sends (information)", *times(engine, "outbox_"), "",
         f"{count(engine['outbox'])} outbox rows"],
        ["3 persist", "save_step into a fresh SQLite file", *times(persist), size(persist["peak_rss"]),
         f"{count(stored['instances'])} instances, {count(stored['transitions'])} transitions, "
         f"{count(stored['outbox'])} outbox rows; file {size(persist['file_bytes'])}"],
    ]  # fmt: skip
    return table(["line", "what", "wall s", "cpu s", "peak RSS", "notes"], rows, right=(2, 3, 4))


def target_table(base: dict[str, Any], engine: dict[str, Any], persist: dict[str, Any]) -> str:
    """Engine over baseline (wall, cpu), and persistence scaled to 1M changed instances (rows are written at a
    steady rate, so seconds grow linearly with them)."""
    over = engine["seconds"] / base["seconds"]
    per_million = PERSIST_TARGET_INSTANCES / engine["changed"]
    scaled = persist["seconds"] * per_million
    rows = [
        ["transitions / baseline", ratio(over), ratio(engine["cpu_seconds"] / base["cpu_seconds"]),
         f"<= {TRANSITIONS_TARGET:g}", "yes" if over <= TRANSITIONS_TARGET else "NO"],
        [f"persistence s per {count(PERSIST_TARGET_INSTANCES)} changed instances (measured "
         f"{count(engine['changed'])}, x{per_million:.2f})", seconds(scaled),
         seconds(persist["cpu_seconds"] * per_million), f"< {PERSIST_TARGET:g} s",
         "yes" if scaled < PERSIST_TARGET else "NO"],
    ]  # fmt: skip
    return table(["target", "wall", "cpu", "target", "met (wall)"], rows, right=(1, 2))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase:
        phase_main(args)
        return 0
    folder = CACHE_DIR / f"journeys-{parse_count(args.instances)}-seed-{args.seed}"
    described = folder / "workload.json"
    load_at_start = os.getloadavg()[0]
    try:
        if described.exists():  # kept by an earlier run with --keep-data
            data = json.loads(described.read_text())
        else:
            folder.mkdir(parents=True, exist_ok=True)
            data = run_phase("prepare", args, folder)
            described.write_text(json.dumps(data))
        base = run_phase("baseline", args, folder)
        engine = run_phase("engine", args, folder)
        persist = run_phase("persist", args, folder)
    finally:
        if not args.keep_data:
            shutil.rmtree(folder, ignore_errors=True)
    print(header(data, args, (load_at_start, os.getloadavg()[0])), end="\n\n")
    print(phase_table(data, base, engine, persist), end="\n\n")
    print(target_table(base, engine, persist))
    problems = engine["problems"] + persist["problems"]
    for problem in problems:
        print(f"\nWRONG ANSWER: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
