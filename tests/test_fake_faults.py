"""The fakes' fault tools that dispatch tests lean on: early-request tracking, seeded chaos, held answers."""

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.fakes import FakeFcm, FakeSendGrid
from engine.fakes.chaos import Chaos
from engine.providers.fcm_push import FcmPushSender
from engine.providers.messages import Email, Push
from tests.dispatch_world import VirtualClock, email_sender, push_sender


def push(key: str) -> Push:
    return Push(key, "run", f"token-{key}", "Title", "Body")


def email(key: str) -> Email:
    return Email(key, "run", f"{key}@example.com", "Subject", "<p>Hi</p>", "Hi")


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def fcm(clock: VirtualClock) -> Iterator[FakeFcm]:
    with FakeFcm(clock=clock.epoch, early_grace=0.25) as fake:
        yield fake


@pytest.fixture
def pusher(fcm: FakeFcm, tmp_path: Path) -> Iterator[FcmPushSender]:
    sender = push_sender(fcm, tmp_path)
    yield sender
    sender.close()


def test_fcm_counts_a_resend_before_its_retry_after_as_early(fcm, pusher, clock):
    fcm.fail_next("QUOTA_EXCEEDED", retry_after=30)
    assert pusher.send([push("a")])[0].status == "retryable"
    pusher.send([push("a")])  # too soon
    pusher.send([push("b")])  # another device: its quota is its own
    clock.advance(31)
    pusher.send([push("a")])
    assert [r.body["message"]["data"]["send_key"] for r in fcm.early_requests()] == ["a"]


def test_fcm_counts_any_send_after_a_service_wide_retry_after_as_early(fcm, pusher, clock):
    fcm.fail_next("UNAVAILABLE", retry_after=10)
    assert pusher.send([push("a")])[0].retry_after == 10
    clock.advance(1)  # past the grace for requests already in flight
    pusher.send([push("b")])
    clock.advance(10)
    pusher.send([push("c")])
    assert [r.body["message"]["data"]["send_key"] for r in fcm.early_requests()] == ["b"]


def test_sendgrid_counts_a_resend_of_the_same_key_before_its_reset_even_within_the_grace():
    with FakeSendGrid(early_grace=10.0) as fake:
        sender = email_sender(fake)
        try:
            fake.fail_next(429, reset_in=5.0)
            assert sender.send([email("a")])[0].status == "retryable"
            sender.send([email("b")])  # another key, within the grace: not early
            sender.send([email("a")])  # the limited key itself, before its reset: early
        finally:
            sender.close()
        early = [[p["custom_args"]["send_key"] for p in r.body["personalizations"]] for r in fake.early_requests()]
    assert early == [["a"]]


def test_chaos_depends_on_the_key_and_its_arrival_not_on_the_order_of_arrivals():
    keys = [f"k{i}" for i in range(50)]

    def faults_by_key(seed: int, order: list[str]) -> dict[str, list[str | None]]:
        chaos = Chaos(seed, rate_limited=0.2, unavailable=0.2, hang=0.1)
        drawn: dict[str, list[str | None]] = {key: [] for key in keys}
        for _ in range(3):  # three arrivals of every key, interleaved
            for key in order:
                drawn[key].append(chaos.fault_for(key))
        return drawn

    forward = faults_by_key(3, keys)
    assert forward == faults_by_key(3, keys[::-1])
    assert forward != faults_by_key(4, keys)
    assert {fault for faults in forward.values() for fault in faults} == {None, "rate_limited", "unavailable", "hang"}


def test_held_answers_are_recorded_as_accepted_and_released_on_demand():
    with FakeSendGrid() as fake:
        sender = email_sender(fake)
        try:
            fake.hold_accepted(1, skip=1)
            outcomes = sender.send([email("a")])  # the one let through
            worker = threading.Thread(target=lambda: outcomes.extend(sender.send([email("b")])))
            worker.start()
            deadline = time.monotonic() + 10
            while not fake.held() and time.monotonic() < deadline:
                time.sleep(0.01)
            held = [[p["custom_args"]["send_key"] for p in r.body["personalizations"]] for r in fake.held()]
            assert held == [["b"]] and worker.is_alive()
            assert [r.status for r in fake.received("/v3/mail/send")] == [202, 202]  # both taken by the provider
            assert sorted(m.custom_args["send_key"] for m in fake.accepted()) == ["a", "b"]
            fake.release_held()
            worker.join()
        finally:
            sender.close()
    assert [o.status for o in outcomes] == ["accepted", "accepted"]
