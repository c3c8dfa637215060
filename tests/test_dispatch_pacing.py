"""Pacing dispatch with Prefect global concurrency limits used as rate limits, on the session's test server."""

import logging
import time
from collections.abc import Iterator

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

from tasks.pacing import provider_pacers, rate_limits

pytestmark = pytest.mark.slow


@pytest.fixture
def fcm_limit(prefect_harness: None) -> Iterator[str]:
    """`nudge-fcm` as an operator creates it: 10 slots, 20 decaying per second."""
    name = rate_limits()["push"]
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=10, slot_decay_per_second=20.0)
        )
        yield name
        client.delete_global_concurrency_limit_by_name(name)


def test_without_limits_nothing_is_paced_and_the_log_says_so_once(prefect_harness, caplog):
    caplog.set_level(logging.INFO, logger="pacing-test")
    assert provider_pacers(logging.getLogger("pacing-test")) == {}
    assert [r.getMessage() for r in caplog.records] == [
        "email is not paced: no Prefect rate limit named 'nudge-sendgrid' (see tasks/pacing.py)",
        "push is not paced: no Prefect rate limit named 'nudge-fcm' (see tasks/pacing.py)",
    ]


def test_a_rate_limit_holds_waves_to_its_decay_rate(fcm_limit):
    pacers = provider_pacers(logging.getLogger("pacing-test"))
    assert set(pacers) == {"push"}
    started = time.monotonic()
    for _ in range(6):
        pacers["push"](8)  # 48 messages: 10 slots at once, then 20 a second
    elapsed = time.monotonic() - started
    assert elapsed >= 1.5, elapsed  # (50 slots taken - 10 free) / 20 per second = 2 s
