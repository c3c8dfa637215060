"""The local operator stack of docs/operations.md, for real: the same commands, in the same order.

A `prefect server` on a free loopback port with its own PREFECT_HOME, the process work pool, the global
concurrency limits and the zombie automation, `prefect deploy --all` from the repository's prefect.yaml, a
`prefect worker`, then the daily deployment for one as_of and the backfill deployment (a dry replay, its default)
over three days after it, each through `prefect deployment run ... --watch`. Every process is stopped, with its
children, at the end. Nothing is pre-started: this is what CI runs.

Test-only tuning, not in the docs: the server's scheduler is off (the deployed daily and dispatch-due schedules must not
start runs while the test watches) and the worker polls every second instead of every ten.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from sqlalchemy import func, select

from engine.automations import ZOMBIE_AUTOMATION
from engine.db import connect
from engine.fakes import FakeProviders
from engine.replay import OUTPUTS
from engine.sample.generate import generate
from engine.settings import REPO_ROOT
from models.tables import JourneyInstance, Run

pytestmark = pytest.mark.slow

PREFECT = Path(sys.executable).with_name("prefect")
LIVE_AS_OF = datetime(2026, 9, 9, 6, tzinfo=UTC)
BACKFILL = (date(2026, 9, 10), date(2026, 9, 12))
REPLAYED = ("2026-09-10T060000Z", "2026-09-11T060000Z", "2026-09-12T060000Z")
SHIPPED = {d["name"]: d for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]}
LIMITS = {"nudge-outbox": (1, 0.0), "nudge-sendgrid": (600, 100.0), "nudge-fcm": (1000, 500.0)}
SERVER_START_SECONDS = 240
RUN_SECONDS = 600


@dataclass
class Stack:
    """Processes started by the test, their logs, and the environment every Prefect client gets."""

    root: Path
    env: dict[str, str]
    api: str
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    clock: float = field(default_factory=time.monotonic)

    def lap(self, step: str) -> None:
        """Prints how long a step took: pytest shows it with a failure, and -s shows it always."""
        now = time.monotonic()
        print(f"operator stack: {step} in {now - self.clock:.1f} s")
        self.clock = now

    def start(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        """A long-running process in its own process group, its output in <root>/<name>.log."""
        with (self.root / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.procs.append((name, proc))
        return proc

    def log(self, name: str, tail: int = 6000) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def commands(self, *commands: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> list[str]:
        """Run independent commands at once (each CLI start costs seconds of imports); all must succeed."""
        started = [
            (
                c,
                subprocess.Popen(
                    c, env=env or self.env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
                ),
            )
            for c in commands
        ]
        outputs = []
        for command, proc in started:
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            text = out.decode(errors="replace")
            assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}:\n{text}\n{self.log('worker')}"
            outputs.append(text)
        return outputs

    def run_deployment(self, name: str, **parameters: str) -> str:
        """`prefect deployment run NAME -p k=v ... --watch`: returns the flow run id once it is Completed."""
        params = [arg for key, value in parameters.items() for arg in ("-p", f"{key}={value}")]
        command = [str(PREFECT), "deployment", "run", name, *params, "--watch", "--watch-timeout", str(RUN_SECONDS)]
        (out,) = self.commands(command, timeout=RUN_SECONDS + 60)
        return re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)

    def get(self, path: str) -> object:
        response = httpx.get(f"{self.api}{path}", timeout=60)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict | None = None) -> list[dict]:
        response = httpx.post(f"{self.api}{path}", json=body or {}, timeout=60)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        """Newest first: SIGINT to the process group (Ctrl-C), then SIGKILL to whatever is left, children included.

        Flow runs start in sessions of their own, so a worker's children are listed before it is signalled.
        """
        for _, proc in reversed(self.procs):
            try:
                tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
                os.killpg(proc.pid, signal.SIGINT)
            except (psutil.NoSuchProcess, ProcessLookupError):
                tree = []
            _, alive = psutil.wait_procs(tree, timeout=20)
            for leftover in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    leftover.kill()
            proc.wait(timeout=10)


@dataclass
class Ran:
    stack: Stack
    home: Path
    fakes: FakeProviders
    daily: str
    backfill: str
    requests_after_daily: int


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> Iterator[Ran]:
    root = tmp_path_factory.mktemp("operator")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "NUDGE_"))}
    env = {
        **inherited,
        "PREFECT_HOME": str(root / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    stack = Stack(root, env, api)
    fakes = FakeProviders(root / "fakes")
    try:
        # 1. The server (and, while it starts, the data and the fake providers).
        server_env = {**env, "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}
        server = stack.start(
            "server", [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)], server_env, root
        )
        home = root / "nudge"
        generate(home / "snapshot", users=500, days=14, start=date(2026, 9, 1), seed=5)
        fakes.start()
        _wait_healthy(stack, server)
        stack.lap("server started (and data generated)")

        # 2. The work pool; then, while the worker starts, the deployments, concurrency limits and automation,
        # from the operator's terminal (NUDGE_PROJECT_DIR exported there: the deployments record it).
        shell = {**env, "NUDGE_PROJECT_DIR": str(REPO_ROOT)}
        stack.commands([str(PREFECT), "work-pool", "create", "nudge-local", "--type", "process"], env=shell)
        worker_env = {
            **env,
            **fakes.env(),
            "NUDGE_HOME": str(home),
            "NUDGE_SNAPSHOT_DIR": str(home / "snapshot"),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
        stack.start("worker", [str(PREFECT), "worker", "start", "--pool", "nudge-local"], worker_env, root)
        shipped = (REPO_ROOT / "prefect.yaml").read_text()
        stack.commands(
            [str(PREFECT), "--no-prompt", "deploy", "--all"],
            [str(PREFECT), "gcl", "create", "nudge-outbox", "--limit", "1"],
            [str(PREFECT), "gcl", "create", "nudge-sendgrid", "--limit", "600", "--slot-decay-per-second", "100"],
            [str(PREFECT), "gcl", "create", "nudge-fcm", "--limit", "1000", "--slot-decay-per-second", "500"],
            [sys.executable, "-m", "engine.automations"],
            env=shell,
        )
        assert (REPO_ROOT / "prefect.yaml").read_text() == shipped, "prefect deploy rewrote prefect.yaml"
        stack.lap("deployed, limits and automation created")

        # 3. One live day, then a replay of the three days after it.
        daily = stack.run_deployment("daily-campaign/daily", as_of=LIVE_AS_OF.isoformat())
        stack.lap("daily run")
        requests = _requests(fakes)
        backfill = stack.run_deployment("backfill/backfill", start=BACKFILL[0].isoformat(), end=BACKFILL[1].isoformat())
        stack.lap("backfill run")
        yield Ran(stack, home, fakes, daily, backfill, requests)
    finally:
        stack.stop()
        fakes.stop()
        stack.lap("stopped")


def test_prefect_yaml_deploys_every_deployment_to_the_work_pool_with_the_checkout_as_working_directory(ran):
    deployments = {d["name"]: d for d in ran.stack.post("/deployments/filter")}
    assert set(deployments) == set(SHIPPED) >= {"daily", "hourly", "dispatch-due", "backfill"}
    for name, deployment in deployments.items():
        shipped = SHIPPED[name]
        assert deployment["work_pool_name"] == shipped["work_pool"]["name"] == "nudge-local"
        assert deployment["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}
        ]
        assert deployment["tags"] == shipped["tags"]
        assert deployment["parameters"] == shipped.get("parameters", {})
        limit = deployment["global_concurrency_limit"]
        assert (limit and limit["limit"]) == shipped.get("concurrency_limit", {}).get("limit"), name
    assert deployments["backfill"]["parameters"] == {"dry_run": True}
    assert [s["active"] for s in deployments["hourly"]["schedules"]] == [False]


def test_the_daily_deployment_runs_on_the_worker_and_writes_live_state(ran):
    _assert_completed(ran.stack, ran.daily)
    engine = connect(f"sqlite:///{ran.home / 'nudge.db'}")
    try:
        with engine.connect() as conn:
            runs = conn.execute(select(Run.__table__)).mappings().all()
            instances = conn.execute(select(func.count()).select_from(JourneyInstance.__table__)).scalar_one()
    finally:
        engine.dispose()
    (run,) = runs
    assert (run["flow_run_id"], run["status"]) == (ran.daily, "completed")
    assert run["as_of"].replace(tzinfo=UTC) == LIVE_AS_OF
    assert json.loads(run["counts"]), "the run history records its counts"
    assert instances > 0, "users who entered cart_abandoners started the journey (its first email is a day later)"
    assert (ran.home / "store").is_dir()


def test_the_backfill_deployment_replays_each_day_and_sends_nothing(ran):
    _assert_completed(ran.stack, ran.backfill)
    assert ran.stack.get(f"/flow_runs/{ran.backfill}")["name"] == "replay 2026-09-10..2026-09-12"
    workspace = ran.home / "replays" / "default"
    for day in REPLAYED:
        assert sorted(p.name for p in (workspace / "days" / day).iterdir()) == sorted(f"{o}.parquet" for o in OUTPUTS)
    computed = [d["as_of"] for d in json.loads((workspace / "workspace.json").read_text())["days"]]
    assert computed[0] == LIVE_AS_OF.isoformat(), "the live day before start was replayed first"
    assert len(computed) == 1 + len(REPLAYED)
    artifacts = ran.stack.post("/artifacts/filter", {"artifacts": {"key": {"any_": ["replay-default-comparison"]}}})
    assert len(artifacts) == 1
    assert ran.requests_after_daily == 0, "the first day plans no send (the journey waits a day)"
    assert _requests(ran.fakes) == 0, "a replay calls no provider"


def test_the_operator_setup_is_on_the_server(ran):
    limits = {c["name"]: c for c in ran.stack.post("/v2/concurrency_limits/filter")}
    for name, (limit, decay) in LIMITS.items():
        assert (limits[name]["limit"], limits[name]["slot_decay_per_second"]) == (limit, decay), name
    (automation,) = [a for a in ran.stack.post("/automations/filter") if a["name"] == ZOMBIE_AUTOMATION]
    trigger = automation["trigger"]
    assert automation["enabled"] and trigger["posture"] == "Proactive"
    assert (trigger["after"], trigger["expect"], trigger["within"]) == (
        ["prefect.flow-run.heartbeat"],
        ["prefect.flow-run.*"],
        540.0,  # three of the default 180 s heartbeats
    )
    assert automation["actions"][0]["type"] == "change-flow-run-state"
    assert automation["actions"][0]["state"] == "CRASHED"
    ui = httpx.get(ran.stack.api.removesuffix("/api") + "/", timeout=60)
    assert ui.status_code == 200 and "<html" in ui.text.lower()


# Helpers -------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(stack: Stack, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        assert server.poll() is None, f"prefect server exited {server.returncode}:\n{stack.log('server')}"
        try:
            if httpx.get(f"{stack.api}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"prefect server not healthy after {SERVER_START_SECONDS} s:\n{stack.log('server')}")


def _assert_completed(stack: Stack, flow_run_id: str) -> None:
    """The flow run and every task run in it Completed."""
    assert stack.get(f"/flow_runs/{flow_run_id}")["state"]["type"] == "COMPLETED"
    tasks = stack.post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    assert tasks and {t["state"]["type"] for t in tasks} == {"COMPLETED"}, [t["name"] for t in tasks]


def _requests(fakes: FakeProviders) -> int:
    """Every request either fake received, token fetches included."""
    return len(fakes.sendgrid.received()) + len(fakes.fcm.received())
