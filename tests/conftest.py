"""Session-wide fixtures: one Prefect test server for the whole suite (starting one costs 15-30 s)."""

import os
from collections.abc import Iterator

import pytest

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
