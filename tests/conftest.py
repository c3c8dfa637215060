"""Session-wide fixtures: one Prefect test server for the whole suite (starting one costs 15-30 s)."""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.settings import REPO_ROOT

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
