"""When a retryable message goes again: its next_attempt_at on the dispatch clock, and the provider's pauses.

The fake FCM and dispatch share a virtual clock (FCM's Retry-After is relative, so no wall time is involved):
minutes of provider waits pass in no time, and the fake still knows whether a request came early.
"""

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from engine.dispatch_policy import DispatchPolicy
from engine.fakes import FakeFcm
from engine.providers.fcm_push import FcmPushSender
from models.tables import ProviderPause
from tests.dispatch_world import (
    VirtualClock,
    dispatch,
    ledger,
    outbox_database,
    planned_rows,
    push_sender,
    sent_keys,
    statuses,
    summary_of,
)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def fcm(clock: VirtualClock) -> Iterator[FakeFcm]:
    with FakeFcm(clock=clock.epoch) as fake:
        yield fake


@pytest.fixture
def sender(fcm: FakeFcm, tmp_path: Path) -> Iterator[FcmPushSender]:
    built = push_sender(fcm, tmp_path)
    yield built
    built.close()


@pytest.fixture
def database(tmp_path: Path) -> Engine:
    return outbox_database(f"sqlite:///{tmp_path / 'outbox.db'}", planned_rows("push", 6))


def policy(clock: VirtualClock, **changes: object) -> DispatchPolicy:
    return DispatchPolicy(clock=clock, **({"wave_size": 2, "max_attempts": 5} | changes))  # type: ignore[arg-type]


def close_to(value: datetime | None, expected: datetime) -> bool:
    return value is not None and abs((value - expected).total_seconds()) < 1.0


def test_a_retryable_message_is_not_claimed_before_its_next_attempt(database, sender, fcm, clock):
    fcm.fail_next("QUOTA_EXCEEDED", retry_after=90)  # per device: the other messages go on
    started = clock.now()
    counts = dispatch(database, "push", sender, policy(clock, wave_size=1))
    assert counts.outcomes == {"accepted": 5, "retryable": 1} and counts.paused_until is None
    row = ledger(database)["key-0"]
    assert row["status"] == "retryable" and close_to(row["next_attempt_at"], started + timedelta(seconds=90))

    clock.advance(60)
    assert dispatch(database, "push", sender, policy(clock), run_id="run-2").claimed == 0
    clock.advance(31)
    assert dispatch(database, "push", sender, policy(clock), run_id="run-3").outcomes == {"accepted": 1}
    assert sorted(sent_keys(fcm)) == [f"key-{i}" for i in range(6)]
    assert fcm.early_requests() == []


def test_without_a_provider_wait_the_backoff_doubles_with_each_attempt(tmp_path, sender, fcm, clock):
    database = outbox_database(f"sqlite:///{tmp_path / 'one.db'}", planned_rows("push", 1))
    fcm.fail_next("UNAVAILABLE", count=3)  # no Retry-After
    rule = policy(clock, wave_size=1, backoff_seconds=2.0, max_wait_seconds=0.0)
    waits = []
    for run in range(4):
        before = clock.now()
        dispatch(database, "push", sender, rule, run_id=f"run-{run}")
        row = ledger(database)["key-0"]
        if row["status"] != "retryable":
            break
        waits.append(round((row["next_attempt_at"] - before).total_seconds()))
        clock.advance(waits[-1])
    assert waits == [2, 4, 8]
    assert (row["status"], row["attempts"]) == ("accepted", 4)
    assert fcm.early_requests() == []


def test_a_service_wide_retry_after_pauses_every_message_of_the_channel(database, sender, fcm, clock):
    fcm.fail_next("UNAVAILABLE", retry_after=5)
    counts = dispatch(database, "push", sender, policy(clock, max_wait_seconds=10))
    assert counts.outcomes == {"accepted": 6, "retryable": 1}
    assert 4 < clock.slept <= 5, clock.slept  # Retry-After counts from the answer, the sleep from a bit later
    requests = fcm.received("/v1/")
    first_answer = min(r.timestamp for r in requests)
    assert all(r.timestamp >= first_answer + 5 for r in requests[2:]), "the next wave did not wait for Retry-After"
    assert fcm.early_requests() == []


def test_a_pause_longer_than_the_run_waits_stops_the_channel_and_binds_later_runs(database, sender, fcm, clock):
    fcm.fail_next("UNAVAILABLE", retry_after=60)
    started = clock.now()
    counts = dispatch(database, "push", sender, policy(clock, max_wait_seconds=10))
    assert close_to(counts.paused_until, started + timedelta(seconds=60)) and clock.slept == 0
    assert "push paused by the provider until" in summary_of({"push": counts}).markdown()
    assert len(fcm.received("/v1/")) == 2
    assert sorted(statuses(database).values()) == ["accepted", "planned", "planned", "planned", "planned", "retryable"]
    with database.connect() as conn:
        assert conn.execute(select(ProviderPause.__table__.c.error_code)).scalar_one() == "UNAVAILABLE"

    clock.advance(30)  # a rerun, or another run, before the pause is over sends nothing
    assert dispatch(database, "push", sender, policy(clock), run_id="run-2").claimed == 0
    assert len(fcm.received("/v1/")) == 2
    clock.advance(31)
    dispatch(database, "push", sender, policy(clock), run_id="run-3")
    assert set(statuses(database).values()) == {"accepted"}
    assert fcm.early_requests() == []
