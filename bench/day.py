"""A full day at scale (issue 8): the real daily flow, through Prefect, against the fakes, one new day arriving.

    .venv/bin/python -m bench.day                        # 1M users, 110 days of history (~97M events)
    .venv/bin/python -m bench.day --users 100k           # a tenth of the scale, the same shape
    .venv/bin/python -m bench.day --users 10M --days 8   # the 10M-user variant: the same ~100M events
    .venv/bin/python -m bench.day --profile              # and cProfile the timed run

See bench/README.md for what each line means.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.data import add_age, clone_store, tree_bytes
from bench.fake_process import FakeProcess
from bench.report import count, ratio, size, table
from bench.workload import AS_OF_TIME, BENCH_DIR, CACHE_DIR, REPO_ROOT, START, parse_count
from engine.contract import EVENTS_DIR, USERS_DIR
from engine.sample import generate

SCENARIO_DIR = BENCH_DIR / "scenario"
TARGET_SECONDS = 180.0
TARGET_RSS = {1_000_000: 8 * 2**30, 10_000_000: 16 * 2**30}
WARM_MARKER = "warm.json"
# The first warm-up run meets the flood of every new journey; its follow-ups (delays and wait timeouts of 3 and 4
# days) come due on the 4th and 5th runs, and those quiet hours hold go out on the next day's run, the 6th. The
# 7th, the timed one, then sends what a deployment sends every day: the day's new entries, the follow-ups of
# entries 3 and 4 days old and the messages held since yesterday, none of them the flood's.
WARM_UP_DAYS = 6
STAGE_FLOORS = {
    "ingest_task": "ingest",
    "segments_task": "segments",
    "journeys_task": "journeys",
    "dispatch_task": "dispatch",
}
_SHOWN_PROFILE_LINES = 30


@dataclass(frozen=True)
class Scenario:
    """Where one scale of the scenario keeps its files, and its instants: the warm-up runs (the days before, so
    the timed run meets state as a deployment would leave it) and the timed run, on the new day."""

    users: int
    days: int
    seed: int
    warm_up_days: int = WARM_UP_DAYS

    @property
    def folder(self) -> Path:
        return CACHE_DIR / f"day-users-{self.users}-days-{self.days}-seed-{self.seed}"

    @property
    def snapshot(self) -> Path:
        return self.folder / "snapshot"

    @property
    def definitions(self) -> Path:
        return self.folder / "definitions"

    def instant(self, day: int) -> datetime:
        return datetime.combine(START + timedelta(days=day), AS_OF_TIME, tzinfo=UTC)

    @property
    def warm_up(self) -> list[datetime]:
        return [self.instant(self.days - back) for back in range(self.warm_up_days, 0, -1)]

    @property
    def timed(self) -> datetime:
        return self.instant(self.days)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.day", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=parse_count, default=parse_count("1M"), help="population (default 1M)")
    parser.add_argument("--days", type=int, default=110, help="days of history before the new day (default 110)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=1, help="best of N for the floors")
    parser.add_argument(
        "--warm-up-days", type=int, default=WARM_UP_DAYS, help=f"runs before the timed one (default {WARM_UP_DAYS})"
    )
    parser.add_argument(
        "--push-processes", type=int, default=2, help="processes sending pushes (NUDGE_FCM_PROCESSES; default 2)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the timed run; print the top functions")
    return parser.parse_args(argv)


def build_definitions(target: Path) -> str:
    """The scenario's definitions folder (the 20 bench segments, its 5 journeys and delivery policy), and
    a digest of its files: warm state made with other definitions is stale."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(BENCH_DIR / "segments", target / "segments")
    shutil.copytree(SCENARIO_DIR / "journeys", target / "journeys")
    shutil.copy2(SCENARIO_DIR / "delivery.yaml", target / "delivery.yaml")
    digest = hashlib.sha256()
    for path in sorted(target.rglob("*.yaml")):
        digest.update(path.relative_to(target).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def ensure_snapshot(scenario: Scenario, step: Callable[[str], None]) -> dict[str, Any]:
    """Generate the history plus the new day once; later runs reuse it (a marker is written last)."""
    marker = scenario.folder / "snapshot.json"
    if marker.exists():
        return json.loads(marker.read_text())
    shutil.rmtree(scenario.folder, ignore_errors=True)
    step(f"generating {count(scenario.users)} users x {scenario.days + 1} days (cached for later runs)")
    report = generate(scenario.snapshot, users=scenario.users, days=scenario.days + 1, start=START, seed=scenario.seed)
    add_age(scenario.snapshot / USERS_DIR / "users.parquet", seed=scenario.seed)
    facts = {
        "events": report.events,
        "generate_seconds": report.seconds,
        "snapshot_bytes": tree_bytes(scenario.snapshot / EVENTS_DIR),
    }
    marker.write_text(json.dumps(facts))
    return facts


def run_child(module: str, spec: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", module, json.dumps(spec)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    if done.returncode:
        raise SystemExit(f"{module} failed with status {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result | {"process_seconds": time.perf_counter() - began}


def engine_env(home: Path, scenario: Scenario, fakes: dict[str, str], push_processes: int) -> dict[str, str]:
    """The child's environment: the engine's folders, the fakes, how many processes send pushes (a deployment on
    this machine would set it so: `engine.providers.fcm_pool`), and a fresh project-local Prefect (ephemeral)
    of its own: a run killed while it held the outbox's concurrency slot leaves that slot taken for good in a
    local Prefect's database (see `flows.edges.outbox_slot`)."""
    prefect_home = scenario.folder / "prefect" / home.name
    shutil.rmtree(prefect_home, ignore_errors=True)
    prefect_home.mkdir(parents=True)
    return {
        **os.environ,
        **fakes,
        "NUDGE_HOME": str(home),
        "NUDGE_SNAPSHOT_DIR": str(scenario.snapshot),
        "NUDGE_DEFINITIONS_DIR": str(scenario.definitions),
        "NUDGE_FCM_PROCESSES": str(push_processes),
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }


def ensure_warm(scenario: Scenario, digest: str, push_processes: int, step: Callable[[str], None]) -> Path:
    """The engine's home after the warm-up runs, made once per definitions digest and set of warm-up days."""
    warm = scenario.folder / "warm"
    marker = scenario.folder / WARM_MARKER
    made = {"definitions": digest, "warm_up": [t.isoformat() for t in scenario.warm_up]}
    if marker.exists() and json.loads(marker.read_text()) == made:
        return warm
    shutil.rmtree(warm, ignore_errors=True)
    marker.unlink(missing_ok=True)
    step(f"warm-up runs at {', '.join(t.isoformat() for t in scenario.warm_up)} (cached for later runs)")
    with FakeProcess(scenario.folder / "fakes") as fakes:
        spec = {"as_of": [t.isoformat() for t in scenario.warm_up]}
        run_child("bench.day_run", spec, engine_env(warm, scenario, fakes.env, push_processes))
    marker.write_text(json.dumps(made))
    return warm


def clone_home(warm: Path, target: Path) -> None:
    """The timed run's home: the warm store cloned (events hard-linked), everything else copied."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for entry in warm.iterdir():
        if entry.name == "store":
            clone_store(entry, target / "store")
        elif entry.is_dir():
            shutil.copytree(entry, target / entry.name)
        else:
            shutil.copy2(entry, target / entry.name)


def stage_rows(run: dict[str, Any], floors: dict[str, Any]) -> list[list[str]]:
    """One row per task of the timed flow run, then Prefect's own time between them, then the flow."""
    flow_seconds = run["flow_end"] - run["flow_start"]
    rows, in_tasks = [], 0.0
    for task in run["tasks"]:
        seconds = task["end"] - task["start"]
        in_tasks += seconds
        floor_name = STAGE_FLOORS.get(task["name"])
        floor = floors[floor_name]["wall"] if floor_name else None
        rows.append([
            task["name"], f"{seconds:.2f}", f"{seconds / flow_seconds:.1%}", size(task["peak_rss_bytes"]),
            f"{floor:.2f}" if floor is not None else "", ratio(seconds / floor) if floor else "",
        ])  # fmt: skip
    between = flow_seconds - in_tasks
    rows.append(["(Prefect between tasks)", f"{between:.2f}", f"{between / flow_seconds:.1%}", "", "", ""])
    rows.append(["flow run", f"{flow_seconds:.2f}", "100%", size(run["peak_rss_bytes"]), "", ""])
    return rows


def message_lines(summary: dict[str, Any], rendered: int, received: dict[str, int]) -> list[str]:
    planned: dict[str, int] = {}
    for journey in summary["journeys"].values():
        for label, n in journey["messages"].items():
            planned[label] = planned.get(label, 0) + n
    delivery = summary["delivery"]
    accepted = sum(int(counts.get("accepted", 0)) for counts in delivery.values())
    return [
        "planned by the run: " + ", ".join(f"{label} {n:,}" for label, n in sorted(planned.items())),
        "dispatched: " + "; ".join(f"{channel} {counts}" for channel, counts in sorted(delivery.items())),
        f"accepted in the ledger: {accepted:,}; received by the fakes (started for this run): "
        f"{', '.join(f'{channel} {n:,}' for channel, n in sorted(received.items()))}; "
        f"rendered by the dispatch floor: {rendered:,}",
        "journeys: " + "; ".join(f"{name} entered {j['entered']:,}" for name, j in sorted(summary["journeys"].items())),
    ]


def show_profile(path: Path) -> str:
    """The engine's functions by cumulative time (Prefect's wrappers left out), then every function by own time."""
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("cumulative").print_stats(r"/(engine|flows|tasks)/", _SHOWN_PROFILE_LINES)
    stats.sort_stats("tottime").print_stats(_SHOWN_PROFILE_LINES // 2)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scenario = Scenario(args.users, args.days, args.seed, args.warm_up_days)

    def step(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    data = ensure_snapshot(scenario, step)
    digest = build_definitions(scenario.definitions)
    timed_home = scenario.folder / "timed"
    profile = scenario.folder / "timed.pstats" if args.profile else None
    warm = ensure_warm(scenario, digest, args.push_processes, step)
    clone_home(warm, timed_home)
    with FakeProcess(scenario.folder / "fakes") as fakes:
        step(f"timed run at {scenario.timed.isoformat()}")
        spec = {"as_of": [scenario.timed.isoformat()], "profile": str(profile) if profile else None}
        run = run_child("bench.day_run", spec, engine_env(timed_home, scenario, fakes.env, args.push_processes))
    step("floors")
    floors = run_child(
        "bench.day_floors",
        {
            "as_of": scenario.timed.isoformat(),
            "since": scenario.warm_up[-1].isoformat(),
            "snapshot": str(scenario.snapshot),
            "store": str(timed_home / "store"),
            "database_before": str(warm / "nudge.db"),
            "database_after": str(timed_home / "nudge.db"),
            "templates": str(REPO_ROOT / "templates"),
            "repeat": args.repeat,
        },
        dict(os.environ),
    )
    flow_seconds = run["flow_end"] - run["flow_start"]
    print()
    print(
        f"{count(scenario.users)} users, {scenario.days} days of history + the new day: {data['events']:,} events "
        f"({size(data['snapshot_bytes'])} of Parquet); timed run at {scenario.timed.isoformat()}; "
        f"pushes sent from {args.push_processes} process(es)"
    )
    print(table(["stage (task)", "wall s", "share", "peak RSS", "floor s", "x floor"],
                stage_rows(run, floors), right=(1, 2, 3, 4, 5)))  # fmt: skip
    print()
    for line in message_lines(run["summary"], floors["rendered"], fakes.accepted):
        print(line)
    print(
        f"floors: ingest = read the new day's raw files and the users file; segments = scan user/event/ts/value of "
        f"all visible events; journeys = active instances LEFT JOIN the day's events; dispatch = contexts + render "
        f"of the messages sent. Child process wall (Prefect's ephemeral server start included): "
        f"{run['process_seconds']:.1f} s; RSS before the flow {size(run['rss_before_bytes'])}."
    )
    rss_target = TARGET_RSS.get(scenario.users)
    verdicts = [f"flow run {flow_seconds:.1f} s (target < {TARGET_SECONDS:.0f} s at 1M users)"]
    if rss_target:
        verdicts.append(f"peak RSS {size(run['peak_rss_bytes'])} (target < {size(rss_target)})")
    print("; ".join(verdicts))
    if profile:
        print(show_profile(profile))
    accepted = {c: int(counts.get("accepted", 0)) for c, counts in run["summary"]["delivery"].items()}
    if {c: n for c, n in fakes.accepted.items() if n} != {c: n for c, n in accepted.items() if n}:
        print(f"MISMATCH: the ledger accepted {accepted}, the fakes received {fakes.accepted}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
