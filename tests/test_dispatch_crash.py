"""Acceptance: a dispatcher killed between the provider's 2xx and the ledger update, then rerun.

The dispatch runs in a child process (`tests/dispatch_child.py`). The fake accepts the third wave's requests,
records them, and holds their answers; the test SIGKILLs the child while those answers are in flight. Reruns
then must send what was never sent, resend exactly the in-flight wave (policy `resend`) and count it.

A wave is what is in flight at once: WAVE pushes go as WAVE requests, WAVE emails as one SendGrid request of
WAVE personalizations, so the email case holds that one request and its duplicates are all its emails.
"""

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine.dispatch import in_doubt
from engine.dispatch_policy import DispatchPolicy, WallClock
from engine.fakes import FakeFcm, FakeSendGrid
from engine.settings import REPO_ROOT
from tests.dispatch_world import (
    VirtualClock,
    dispatch,
    email_sender,
    outbox_database,
    planned_rows,
    push_sender,
    sent_keys,
    statuses,
    summary_of,
)

MESSAGES = 30
WAVE = 8


def wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def keys_of(body: Any) -> list[str]:
    """The send keys a request carries: each personalization of a SendGrid request, or an FCM message's."""
    if "personalizations" in body:
        return [str(p["custom_args"]["send_key"]) for p in body["personalizations"]]
    return [str(body["message"]["data"]["send_key"])]


@pytest.mark.parametrize("channel", ["email", "push"])
def test_a_kill_after_the_providers_2xx_duplicates_only_the_wave_in_flight(tmp_path: Path, channel: str):
    database_file = tmp_path / "outbox.db"
    database = outbox_database(f"sqlite:///{database_file}", planned_rows(channel, MESSAGES))
    fake: FakeSendGrid | FakeFcm = FakeSendGrid() if channel == "email" else FakeFcm()
    with fake:
        config: dict[str, str | int] = {"database": str(database_file), "channel": channel, "run_id": "doomed",
                                        "wave_size": WAVE, "url": fake.url}  # fmt: skip
        if isinstance(fake, FakeSendGrid):
            config["api_key"] = fake.api_key
        else:
            config["service_account"] = str(fake.write_service_account(tmp_path / "account.json"))
        requests_per_wave = 1 if isinstance(fake, FakeSendGrid) else WAVE
        # The third wave: taken by the provider, answers held.
        fake.hold_accepted(requests_per_wave, skip=2 * requests_per_wave)
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.dispatch_child", json.dumps(config)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for(lambda: len(fake.held()) == requests_per_wave or child.poll() is not None, seconds=120)
            assert len(fake.held()) == requests_per_wave, child.communicate()
            in_flight_keys = [key for request in fake.held() for key in keys_of(request.body)]
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
            fake.release_held()
        assert child.returncode == -signal.SIGKILL
        in_flight = set(in_flight_keys)
        assert len(in_flight_keys) == len(in_flight) == WAVE, in_flight_keys

        after_crash = statuses(database)
        assert Counter(after_crash.values()) == {"accepted": 2 * WAVE, "sending": WAVE, "claimed": MESSAGES - 3 * WAVE}
        assert {key for key, status in after_crash.items() if status == "sending"} == in_flight

        sender = email_sender(fake) if isinstance(fake, FakeSendGrid) else push_sender(fake, tmp_path)
        try:
            # Right away: the never-sent rows go; the wave in flight may still be someone's, so it waits.
            first = dispatch(database, channel, sender, DispatchPolicy(clock=WallClock(), wave_size=WAVE), "rerun-1")
            assert first.outcomes == {"accepted": MESSAGES - 3 * WAVE} and first.possible_duplicates == 0
            assert in_doubt(database, run_id="rerun-1") == WAVE
            # Once its sending marks are stale (in_doubt_after_seconds, 300 s): resent and counted.
            later = DispatchPolicy(clock=VirtualClock(offset=301), wave_size=WAVE)
            second = dispatch(database, channel, sender, later, "rerun-2")
        finally:
            sender.close()
        sends = Counter(sent_keys(fake))

    assert second.outcomes == {"accepted": WAVE} and second.possible_duplicates == WAVE
    assert {key for key, n in sends.items() if n > 1} == in_flight, "duplicates beyond the wave in flight"
    assert sends == {f"key-{i}": 2 if f"key-{i}" in in_flight else 1 for i in range(MESSAGES)}, "lost or tripled"
    assert set(statuses(database).values()) == {"accepted"} and in_doubt(database, run_id="rerun-2") == 0

    summary = summary_of({channel: second})
    assert summary.messages()[f"{channel}_possible_duplicates"] == WAVE
    assert summary.counts()["delivery"] == {channel: {"claimed": WAVE, "accepted": WAVE, "possible_duplicates": WAVE}}
    assert f"**{WAVE} possible duplicate(s)**" in summary.markdown()
