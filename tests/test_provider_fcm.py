"""FcmPushSender through the real firebase-admin and google-auth, over HTTP, against the loopback fake.

A guard on name resolution fails the module if anything (such as google-auth's regional access
boundary lookup) tries to reach a host other than 127.0.0.1.
"""

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from firebase_admin import messaging

from engine.fakes import FakeFcm
from engine.providers.fcm_endpoint import DEFAULT_RETRIES, FCM_BASE_URL, read_environment_once
from engine.providers.fcm_push import FcmPushSender
from engine.providers.messages import Push

# The SDK's retry policy without its backoff sleeps, so that retried 503s take milliseconds.
NO_BACKOFF = DEFAULT_RETRIES.new(backoff_factor=0)
LOOPBACK = {"127.0.0.1", "localhost"}


@pytest.fixture(scope="module", autouse=True)
def loopback_only() -> Iterator[list[str]]:
    attempts: list[str] = []
    resolve = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in LOOPBACK:
            attempts.append(str(host))
            raise OSError(f"tests may not resolve {host}")
        return resolve(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", guarded)
        yield attempts
        time.sleep(0.1)  # let any background lookup thread run into the guard
    assert attempts == []


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeFcm]:
    with FakeFcm() as server:
        yield server


@pytest.fixture(scope="module")
def account(fake: FakeFcm, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake.write_service_account(tmp_path_factory.mktemp("fcm") / "service-account.json")


@pytest.fixture(scope="module")
def sender(fake: FakeFcm, account: Path) -> Iterator[FcmPushSender]:
    sender = FcmPushSender(account, endpoint=fake.url, retries=NO_BACKOFF)
    yield sender
    sender.close()


@pytest.fixture(autouse=True)
def fresh_record(fake: FakeFcm) -> None:
    fake.clear()


def push(key: str = "p-1", token: str = "token-1", **overrides: Any) -> Push:
    fields: dict[str, Any] = {
        "send_key": key,
        "run_id": "run-7",
        "token": token,
        "title": "Fresh bread",
        "body": "Your bakery has a coupon",
        "data": {"deep_link": "nudge://coupons/42"},
    } | overrides
    return Push(**fields)


def sends(fake: FakeFcm) -> list[Any]:
    return fake.received("/v1/")


def test_a_cold_sender_fetches_one_token_then_sends(fake: FakeFcm, account: Path) -> None:
    cold = FcmPushSender(account, endpoint=fake.url)
    pushes = [push(f"p-{i}", f"token-{i}") for i in range(50)]

    outcomes = cold.send(pushes)

    cold.close()
    assert [o.send_key for o in outcomes] == [p.send_key for p in pushes]
    assert {o.status for o in outcomes} == {"accepted"}
    assert all(o.provider_message_id.startswith("projects/nudge-demo/messages/") for o in outcomes)  # type: ignore[union-attr]
    grants = fake.received("/token")
    assert [g.status for g in grants] == [200]
    assert grants[0].body["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"


def test_a_key_the_fake_did_not_issue_is_refused(fake: FakeFcm, account: Path, tmp_path: Path) -> None:
    tampered = json.loads(account.read_text())
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tampered["private_key"] = other_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    (tmp_path / "tampered.json").write_text(json.dumps(tampered))
    impostor = FcmPushSender(tmp_path / "tampered.json", endpoint=fake.url)

    outcomes = impostor.send([push("p-1"), push("p-2")])

    impostor.close()
    assert {(o.status, o.error_code) for o in outcomes} == {("failed", "oauth_refused")}
    [refusal] = fake.received("/token")  # google-auth does not retry an invalid_grant
    assert refusal.status == 400
    assert sends(fake) == []


def test_the_wire_message_carries_the_send_key_everywhere(fake: FakeFcm, sender: FcmPushSender) -> None:
    sender.send([push()])

    [message] = fake.sent_messages()
    assert message["token"] == "token-1"
    assert message["notification"] == {"title": "Fresh bread", "body": "Your bakery has a coupon"}
    assert message["data"] == {"deep_link": "nudge://coupons/42", "send_key": "p-1", "run_id": "run-7"}
    assert message["android"] == {"ttl": "86400s", "notification": {"tag": "p-1"}}
    assert message["apns"]["headers"]["apns-collapse-id"] == "p-1"
    assert int(message["apns"]["headers"]["apns-expiration"]) > time.time() + 86000


def test_unregistered_token_fails_and_marks_the_recipient_invalid(fake: FakeFcm, sender: FcmPushSender) -> None:
    fake.unregister("gone-token")

    ok, gone = sender.send([push("p-1"), push("p-2", "gone-token")])

    assert ok.status == "accepted"
    assert (gone.status, gone.error_code, gone.invalid_recipient) == ("failed", "UNREGISTERED", True)


def test_quota_exceeded_is_retryable_after_at_least_a_minute(fake: FakeFcm, sender: FcmPushSender) -> None:
    fake.fail_next("QUOTA_EXCEEDED")
    fake.fail_next("QUOTA_EXCEEDED", retry_after=120)
    started = time.monotonic()

    first = sender.send([push("p-1")])[0]
    second = sender.send([push("p-2")])[0]

    assert (first.status, first.error_code, first.retry_after) == ("retryable", "QUOTA_EXCEEDED", 60.0)
    assert (second.status, second.retry_after) == ("retryable", 120.0)
    assert time.monotonic() - started < 2, "the SDK must not sleep on Retry-After"
    assert len(sends(fake)) == 2


def test_invalid_argument_is_permanent(fake: FakeFcm, sender: FcmPushSender) -> None:
    fake.fail_next("INVALID_ARGUMENT")

    [outcome] = sender.send([push()])

    assert (outcome.status, outcome.error_code, outcome.invalid_recipient) == ("failed", "INVALID_ARGUMENT", False)
    assert "scripted INVALID_ARGUMENT" in (outcome.detail or "")


def test_unavailable_comes_back_at_once_as_retryable_for_the_ledger_to_schedule(
    fake: FakeFcm, sender: FcmPushSender
) -> None:
    """The SDK's own quick 503 resends would ignore Retry-After (see fcm_endpoint.DEFAULT_RETRIES)."""
    fake.fail_next("UNAVAILABLE", retry_after=30)

    [outcome] = sender.send([push()])

    assert (outcome.status, outcome.error_code, outcome.retry_after) == ("retryable", "UNAVAILABLE", 30.0)
    assert [s.status for s in sends(fake)] == [503]


def test_sender_id_mismatch_fails_as_configuration(fake: FakeFcm, sender: FcmPushSender) -> None:
    fake.fail_next("SENDER_ID_MISMATCH")

    [outcome] = sender.send([push()])

    assert (outcome.status, outcome.error_code, outcome.invalid_recipient) == ("failed", "SENDER_ID_MISMATCH", False)


def test_a_hang_beyond_the_timeout_is_a_retryable_timeout(tmp_path: Path) -> None:
    # A fake of its own: stopping it ends the hung requests, which would otherwise land in later tests.
    with FakeFcm() as hanging:
        account = hanging.write_service_account(tmp_path / "service-account.json")
        impatient = FcmPushSender(account, endpoint=hanging.url, timeout=0.3, retries=NO_BACKOFF)
        impatient.send([push("warm-up")])
        hanging.hang_next(3, count=2)  # the SDK retries a read timeout once

        [outcome] = impatient.send([push()])

        impatient.close()
    assert (outcome.status, outcome.error_code) == ("retryable", "timeout")


def test_a_hung_push_holds_only_itself(tmp_path: Path) -> None:
    with FakeFcm() as hanging:
        account = hanging.write_service_account(tmp_path / "service-account.json")
        impatient = FcmPushSender(account, endpoint=hanging.url, timeout=0.5, retries=NO_BACKOFF)
        impatient.send([push("warm-up")])
        hanging.hang_next(3)
        started = time.monotonic()

        outcomes = impatient.send([push(f"p-{i}", f"token-{i}") for i in range(10)])

        took = time.monotonic() - started
        impatient.close()
    assert sorted((o.status, o.error_code) for o in outcomes) == [("accepted", None)] * 9 + [("retryable", "timeout")]
    assert took < 2.5, "the other pushes went out beside the hung one, not after it"


def test_1200_pushes_all_arrive_without_overflowing_the_connection_pool(
    fake: FakeFcm, sender: FcmPushSender, caplog: pytest.LogCaptureFixture
) -> None:
    pushes = [push(f"p-{i}", f"token-{i}") for i in range(1200)]

    with caplog.at_level("WARNING", logger="urllib3.connectionpool"):
        outcomes = sender.send(pushes)

    assert not [r for r in caplog.records if "pool is full" in r.getMessage()], "more threads than connections"
    assert [o.send_key for o in outcomes] == [p.send_key for p in pushes]
    assert {o.status for o in outcomes} == {"accepted"}
    assert len({o.provider_message_id for o in outcomes}) == 1200
    assert len(sends(fake)) == 1200, "each push sent once"
    assert sorted(m["data"]["send_key"] for m in fake.sent_messages()) == sorted(p.send_key for p in pushes)


def test_a_push_fcm_would_refuse_fails_alone_without_a_request(fake: FakeFcm, sender: FcmPushSender) -> None:
    outcomes = sender.send([push("p-1"), push("p-2", data={"send_key": "mine"}), push("k" * 65), push("p-4")])

    assert [(o.send_key, o.status) for o in outcomes] == [
        ("p-1", "accepted"), ("p-2", "failed"), ("k" * 65, "failed"), ("p-4", "accepted"),
    ]  # fmt: skip
    reserved, long_key = outcomes[1], outcomes[2]
    assert reserved.error_code == long_key.error_code == "invalid_message"
    assert "'p-2'" in (reserved.detail or "") and "reserved" in (reserved.detail or "")
    assert "64 bytes" in (long_key.detail or "")
    assert sorted(m["data"]["send_key"] for m in fake.sent_messages()) == ["p-1", "p-4"]


def test_the_endpoint_is_set_per_app_not_on_the_sdk_class(sender: FcmPushSender) -> None:
    assert messaging._MessagingService.FCM_URL == "https://fcm.googleapis.com/v1/projects/{0}/messages:send"


def test_the_environment_is_read_once_when_the_sender_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proxies and CA bundle still come from the environment, but not on every request (see fcm_endpoint)."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corporate.pem")
    to_google, to_fake = requests.Session(), requests.Session()

    read_environment_once(to_google, FCM_BASE_URL)
    read_environment_once(to_fake, "http://127.0.0.1:8080")

    assert to_google.proxies["https"] == "http://proxy.internal:3128"
    assert "https" not in to_fake.proxies
    assert to_google.verify == "/etc/ssl/corporate.pem"
    assert not to_google.trust_env and not to_fake.trust_env


def test_a_running_sender_no_longer_reads_the_environment_per_request(sender: FcmPushSender) -> None:
    assert messaging._get_messaging_service(sender._app)._client.session.trust_env is False
