"""The outbox limit's slot: a slot left taken fails the run with its remedy instead of hanging it forever."""

import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

from engine.settings import EngineSettings
from flows.edges import OutboxBusyError, outbox_slot
from tasks.run import ensure_outbox_limit_task

LIMIT = "test-outbox-slot"  # not the engine's: other tests of this worker may use that one


def _set_active_slots(count: int) -> None:
    with get_client(sync_client=True) as client:
        client.update_global_concurrency_limit(LIMIT, GlobalConcurrencyLimitUpdate(active_slots=count))


def test_a_slot_left_taken_fails_with_the_remedy_and_the_remedy_frees_it(prefect_harness):
    settings = EngineSettings(outbox_limit=LIMIT, outbox_wait_seconds=1.0)
    ensure_outbox_limit_task.fn(LIMIT)
    _set_active_slots(1)  # what a holder killed under a local Prefect server leaves behind

    began = time.monotonic()
    busy = pytest.raises(OutboxBusyError, match=rf"prefect gcl update {LIMIT} --active-slots 0")
    with busy, outbox_slot(settings):
        pytest.fail("entered a slot that was taken")
    assert time.monotonic() - began < 30

    _set_active_slots(0)
    entered = []
    with outbox_slot(settings):
        entered.append(True)
    assert entered == [True]


def test_a_timeout_of_the_work_inside_is_not_mistaken_for_a_busy_slot(prefect_harness):
    settings = EngineSettings(outbox_limit=LIMIT, outbox_wait_seconds=5.0)
    ensure_outbox_limit_task.fn(LIMIT)
    _set_active_slots(0)
    with pytest.raises(TimeoutError, match="the provider took too long"), outbox_slot(settings):
        raise TimeoutError("the provider took too long")
    with outbox_slot(settings):  # and the slot was given back
        pass
