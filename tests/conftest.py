"""Session-wide fixtures: one Prefect test server for the whole suite (starting one costs 15-30 s)."""

import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets.asyncio.connection

from engine.db import connect
from engine.settings import REPO_ROOT
from tests.postgres import PostgresServer, server_binaries

# Hypothesis fails a test as flaky when the global random state moves while it draws examples. After the first
# flow run, Prefect's events client keeps a websocket open whose keepalive pings draw their payload from the
# global random, in a background thread: give websockets a generator of its own.
websockets.asyncio.connection.random = random.Random()  # type: ignore[assignment]

# The test server's telemetry job writes to its SQLite database and collides with the runs' writes.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A real Prefect API (SQLite-backed) for flow runs; the flow heartbeat thread is off, saving ~1 s a run."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the shipped definitions and templates that a test may break."""
    shutil.copytree(REPO_ROOT / "definitions", tmp_path / "definitions")
    shutil.copytree(REPO_ROOT / "templates", tmp_path / "templates")
    return tmp_path


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session; CI must have it (`.ci/run` installs it), a laptop may not."""
    binaries = server_binaries()
    if binaries is None:
        message = "PostgreSQL server binaries not found: apt-get install postgresql (as .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    folder = Path(tempfile.mkdtemp(prefix="nudge-pg-"))  # not under pytest's root-only tmp: postgres reads it
    server = PostgresServer(binaries, folder).start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database, once on each supported dialect: the engine's SQL must hold on both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nudge.db'}"
        return
    url = request.getfixturevalue("postgres_server").database()
    yield url
    connect(url).dispose()
