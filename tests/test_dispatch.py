"""Dispatch from the outbox to the fake SendGrid: outcomes recorded, waits honoured, nothing sent twice unasked.

`AS_OF`, `fakes`, `senders`, `database` and `dispatch(database, senders, run_id)` are also used by other modules.
"""

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine

from engine.dispatch import DispatchCounts, in_doubt
from engine.dispatch_policy import DispatchPolicy, DispatchSettings
from engine.fakes import FakeProviders, FakeSendGrid
from engine.providers.factory import Senders, build_senders
from engine.providers.settings import FcmSettings, SendGridSettings
from tests.dispatch_world import (
    AS_OF,
    OUTBOX,
    RecordingClock,
    VirtualClock,
    ledger,
    outbox_database,
    planned_rows,
    sent_keys,
    statuses,
)
from tests.dispatch_world import dispatch as dispatch_with

__all__ = ["AS_OF", "database", "dispatch", "fakes", "senders"]
KEYS = [f"key-{i}" for i in range(6)]


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[FakeProviders]:
    with FakeProviders(tmp_path / "fakes", record=False) as providers:
        yield providers


@pytest.fixture
def sendgrid(fakes: FakeProviders) -> FakeSendGrid:
    return fakes.sendgrid


@pytest.fixture
def senders(fakes: FakeProviders) -> Iterator[Senders]:
    env = fakes.env()
    sendgrid = SendGridSettings(api_key=env["NUDGE_SENDGRID_API_KEY"], host=env["NUDGE_SENDGRID_HOST"], timeout=0.4)
    fcm = FcmSettings(
        service_account_file=Path(env["NUDGE_FCM_SERVICE_ACCOUNT_FILE"]), endpoint=env["NUDGE_FCM_ENDPOINT"]
    )
    with build_senders(sendgrid, fcm) as built:
        yield built


@pytest.fixture
def database(database_url: str) -> Engine:
    """Six planned emails, key-0 to key-5, to u0@example.com .. u5@example.com, on SQLite and on PostgreSQL."""
    return outbox_database(database_url, planned_rows("email", 6))


def policy(clock: RecordingClock | VirtualClock | None = None, **changes: object) -> DispatchPolicy:
    settings: dict[str, object] = {"batch_size": 4, "wave_size": 3, "backoff_seconds": 0.01} | changes
    return DispatchPolicy(clock=clock or RecordingClock(), **settings)  # type: ignore[arg-type]


def dispatch(
    database: Engine, senders: Senders, run_id: str, rule: DispatchPolicy | None = None, **kwargs: object
) -> DispatchCounts:
    """Dispatch the emails in batches of 4 and waves of 3, retrying after 10 ms unless `rule` says otherwise."""
    return dispatch_with(database, "email", senders["email"], rule or policy(), run_id, **kwargs)  # type: ignore[arg-type]


def keys_of(body: dict[str, Any]) -> list[str]:
    """The send keys of a SendGrid request, one per personalization."""
    return [p["custom_args"]["send_key"] for p in body["personalizations"]]


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def leave_a_crashed_send(database: Engine, key: str, *, status: str, seconds_ago: float) -> None:
    """What a killed dispatcher leaves: a row it claimed, or marked sending, `seconds_ago`."""
    marked_at = VirtualClock().now() - timedelta(seconds=seconds_ago)
    attempts = 1 if status == "sending" else 0
    with database.begin() as conn:
        conn.execute(
            OUTBOX.update()
            .where(OUTBOX.c.send_key == key)
            .values(status=status, claimed_by="gone:email:1", dispatched_run_id="gone", sending_at=marked_at,
                    attempts=attempts)
        )  # fmt: skip


def test_every_planned_message_is_sent_once_and_recorded(database, senders, sendgrid):
    counts = dispatch(database, senders, "run-1")
    assert counts.as_dict() == {"claimed": 6, "accepted": 6}
    assert set(statuses(database).values()) == {"accepted"}
    assert all(row["attempts"] == 1 and row["provider_message_id"] for row in ledger(database).values())
    assert sorted(sent_keys(sendgrid)) == KEYS
    assert all("sku-1" in (mail.html or "") and "sku-1" in (mail.text or "") for mail in sendgrid.accepted())
    requests = len(sendgrid.received("/v3/mail/send"))

    assert dispatch(database, senders, "run-2").as_dict() == {"claimed": 0}
    assert len(sendgrid.received("/v3/mail/send")) == requests  # the rerun sent nothing at all
    assert sorted(sent_keys(sendgrid)) == KEYS


def test_each_wave_is_marked_sending_before_its_requests_and_the_rest_stays_claimed(database, senders, sendgrid):
    sendgrid.hold_accepted(1)  # the first wave, one request: accepted by the provider, answer not back yet
    run = threading.Thread(target=dispatch, args=(database, senders, "run-1"))
    run.start()
    try:
        wait_for(lambda: len(sendgrid.held()) == 1)
        during = statuses(database)
    finally:
        sendgrid.release_held()
        run.join()
    [held] = sendgrid.held()
    assert Counter(during.values()) == {"sending": 3, "claimed": 1, "planned": 2}, during
    assert {key for key, status in during.items() if status == "sending"} == set(KEYS[:3]) == set(keys_of(held.body))
    assert set(statuses(database).values()) == {"accepted"}


def test_a_rate_limit_holds_back_every_message_until_the_reset(database, senders, sendgrid):
    sendgrid.fail_next(429, count=1, reset_in=0.3)
    clock = RecordingClock()
    counts = dispatch(database, senders, "run-1", policy(clock))
    # The 429 answers the first wave's one request, so each of its three emails is retryable once.
    assert counts.outcomes == {"accepted": 6, "retryable": 3} and counts.claimed == 9
    assert sorted(row["attempts"] for row in ledger(database).values()) == [1, 1, 1, 2, 2, 2]
    assert sendgrid.early_requests() == []
    limited, *after = sendgrid.received("/v3/mail/send")
    assert limited.status == 429 and sorted(keys_of(limited.body)) == KEYS[:3]
    reset = math.ceil(limited.timestamp + 0.3)  # as the fake rounds X-RateLimit-Reset up
    # Nothing was in flight with the 429 (a wave is one request): every later request waited for the reset, and
    # those requests carry every email once, the limited three among them.
    assert after and all(r.timestamp >= reset and r.status == 202 for r in after)
    assert sorted(key for r in after for key in keys_of(r.body)) == KEYS
    assert len(clock.sleeps) >= 1 and 0 < sum(clock.sleeps) <= 1.5, clock.sleeps


def test_a_rejected_message_fails_at_once_and_is_not_retried(database_url, senders, sendgrid):
    """SendGrid refuses key-1's address (no domain), which our own checks let through: its wave's request is
    refused whole, the sender sends each email of it again alone, and only key-1 fails."""
    database = outbox_database(database_url, planned_rows("email", 6, {1: "u1-at-nowhere"}))
    dispatch(database, senders, "run-1")
    failed = {key: (row["attempts"], row["error_code"]) for key, row in ledger(database).items()
              if row["status"] == "failed"}  # fmt: skip
    assert failed == {"key-1": (1, "sendgrid_400")}
    assert sorted(sent_keys(sendgrid)) == [key for key in KEYS if key != "key-1"]
    carrying = [r.status for r in sendgrid.received("/v3/mail/send") if "key-1" in keys_of(r.body)]
    assert carrying == [400, 400]  # its wave's request, then its own; never again

    assert dispatch(database, senders, "run-2").as_dict() == {"claimed": 0}
    assert [r.status for r in sendgrid.received("/v3/mail/send") if "key-1" in keys_of(r.body)] == carrying


def test_retries_stop_at_the_attempt_budget(database, senders, sendgrid):
    sendgrid.fail_next(503, count=100)
    counts = dispatch(database, senders, "run-1", policy(max_attempts=3))
    assert {(row["status"], row["attempts"]) for row in ledger(database).values()} == {("failed", 3)}
    # Each email went out in exactly three requests, whichever others shared them.
    requested = Counter(key for r in sendgrid.received("/v3/mail/send") for key in keys_of(r.body))
    assert requested == dict.fromkeys(KEYS, 3)
    assert counts.outcomes == {"retryable": 12, "failed": 6}


def test_two_concurrent_dispatchers_send_each_message_once(database, senders, sendgrid):
    runs = [
        threading.Thread(target=dispatch, args=(database, senders, f"run-{i}", policy(batch_size=2, wave_size=1)))
        for i in range(2)
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert sorted(sent_keys(sendgrid)) == KEYS
    assert set(statuses(database).values()) == {"accepted"}


def test_rows_a_crashed_run_left_claimed_were_never_sent_and_go_out_once(database, senders, sendgrid):
    for key in KEYS[:2]:
        leave_a_crashed_send(database, key, status="claimed", seconds_ago=1)
    counts = dispatch(database, senders, "run-1")
    assert sorted(sent_keys(sendgrid)) == KEYS
    assert counts.possible_duplicates == 0 and in_doubt(database, run_id="run-1") == 0


def test_a_fresh_sending_mark_is_in_doubt_and_left_alone(database, senders, sendgrid):
    """A mark younger than in_doubt_after may belong to a dispatcher still waiting for its provider."""
    leave_a_crashed_send(database, "key-0", status="sending", seconds_ago=10)
    counts = dispatch(database, senders, "run-1", policy(in_doubt_after_seconds=300))
    assert sorted(sent_keys(sendgrid)) == KEYS[1:]
    assert statuses(database)["key-0"] == "sending"
    assert in_doubt(database, run_id="run-1") == 1 and counts.possible_duplicates == 0


def test_under_resend_a_stale_sending_mark_is_sent_again_and_counted(database, senders, sendgrid):
    leave_a_crashed_send(database, "key-0", status="sending", seconds_ago=301)
    counts = dispatch(database, senders, "run-1", policy(in_doubt_after_seconds=300))
    assert sorted(sent_keys(sendgrid)) == KEYS
    row = ledger(database)["key-0"]
    assert (row["status"], row["attempts"], row["error_code"]) == ("accepted", 2, None)
    assert counts.possible_duplicates == 1 and counts.as_dict()["possible_duplicates"] == 1
    assert in_doubt(database, run_id="run-1") == 0


def test_under_hold_an_unknown_outcome_is_never_sent_again(database, senders, sendgrid):
    leave_a_crashed_send(database, "key-0", status="sending", seconds_ago=86_400)
    counts = dispatch(database, senders, "run-1", policy(in_doubt="hold"))
    assert sorted(sent_keys(sendgrid)) == KEYS[1:]
    assert statuses(database)["key-0"] == "sending"
    assert in_doubt(database, run_id="run-1") == 1 and counts.possible_duplicates == 0


@pytest.mark.parametrize(
    ("rule", "sends_of_key", "status", "duplicates"), [("resend", 2, "accepted", 1), ("hold", 1, "sending", 0)]
)
def test_a_timeout_is_an_unknown_outcome_handled_by_the_policy(
    database, senders, sendgrid, rule, sends_of_key, status, duplicates
):
    sendgrid.hang_next(1.0)  # past the client's 0.4 s timeout; the fake then accepts it anyway
    counts = dispatch(database, senders, "run-1", policy(wave_size=1, in_doubt=rule))
    wait_for(lambda: len(sendgrid.received("/v3/mail/send")) == 5 + sends_of_key)  # the hung answer comes last
    assert Counter(sent_keys(sendgrid)) == {key: sends_of_key if key == "key-0" else 1 for key in KEYS}
    assert statuses(database)["key-0"] == status
    assert counts.possible_duplicates == duplicates
    assert in_doubt(database, run_id="run-1") == (1 if rule == "hold" else 0)


def test_pace_runs_before_each_wave_with_its_size(database, senders, sendgrid):
    """Pacing counts messages (a Prefect limit of emails per second), and each wave is one request."""
    calls: list[tuple[int, int, int]] = []

    def pace(n: int) -> None:
        calls.append((n, len(sendgrid.accepted()), len(sendgrid.received("/v3/mail/send"))))

    dispatch(database, senders, "run-1", pace=pace)
    # Batches of 4 and 2, waves of at most 3: (wave size, emails accepted before it, requests before it).
    assert calls == [(3, 0, 0), (1, 3, 1), (2, 4, 2)]


def test_the_dispatch_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("NUDGE_DISPATCH_IN_DOUBT", "hold")
    monkeypatch.setenv("NUDGE_DISPATCH_PUSH_WAVE_SIZE", "50")
    settings = DispatchSettings()
    clock = RecordingClock()
    assert (settings.policy("push", clock).in_doubt, settings.policy("push", clock).wave_size) == ("hold", 50)
    assert settings.policy("email", clock).wave_size == 500  # one SendGrid request's batch
    monkeypatch.setenv("NUDGE_DISPATCH_IN_DOUBT", "maybe")
    with pytest.raises(ValidationError, match="in_doubt"):
        DispatchSettings()
