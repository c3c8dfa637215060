"""SendGridEmailSender through the real SendGrid SDK, over HTTP, against the loopback fake."""

import socket
import time

import pytest

from engine.fakes import FakeSendGrid
from engine.providers.messages import Email
from engine.providers.sendgrid_email import SendGridEmailSender
from tests.sendgrid_sender import fake_sendgrid, make_sender, sendgrid_sender  # noqa: F401 (fixtures)


def email(key: str = "k-1", to: str = "ada@example.com", **overrides: object) -> Email:
    fields: dict[str, object] = {
        "send_key": key,
        "run_id": "run-7",
        "to": to,
        "subject": "Your basket misses you",
        "html": "<p>Hello Ada</p>",
        "text": "Hello Ada",
        "categories": ("winback",),
    } | overrides
    return Email(**fields)  # type: ignore[arg-type]


def test_accepted_email_carries_message_id_and_custom_args(fake: FakeSendGrid, sender: SendGridEmailSender) -> None:
    [outcome] = sender.send([email()])

    assert outcome.status == "accepted"
    [request] = fake.received()
    assert request.status == 202
    assert outcome.provider_message_id and len(outcome.provider_message_id) == 22
    body = request.body
    assert body["personalizations"] == [
        {"to": [{"email": "ada@example.com"}], "custom_args": {"send_key": "k-1", "run_id": "run-7"}}
    ]
    assert body["from"] == {"email": "hello@example.com", "name": "Nudge"}
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["categories"] == ["winback"]
    assert "mail_settings" not in body
    assert request.headers["Authorization"] == f"Bearer {fake.api_key}"


def test_outcomes_match_send_keys_across_a_concurrent_batch(sender: SendGridEmailSender) -> None:
    emails = [email(f"k-{i}", to=f"user{i}@example.com" if i % 3 else f"broken-{i}") for i in range(30)]

    outcomes = sender.send(emails)

    assert [o.send_key for o in outcomes] == [e.send_key for e in emails]
    for e, o in zip(emails, outcomes, strict=True):
        if "@" in e.to:
            assert o.status == "accepted"
        else:
            assert (o.status, o.error_code, o.invalid_recipient) == ("failed", "sendgrid_400", True)


def test_scripted_400_is_permanent_but_not_the_recipients_fault(
    fake: FakeSendGrid, sender: SendGridEmailSender
) -> None:
    fake.fail_next(400)

    [outcome] = sender.send([email()])

    assert (outcome.status, outcome.error_code, outcome.invalid_recipient) == ("failed", "sendgrid_400", False)
    assert "scripted failure 400" in (outcome.detail or "")


def test_429_is_retryable_after_the_rate_limit_reset(fake: FakeSendGrid, sender: SendGridEmailSender) -> None:
    fake.fail_next(429, reset_in=30)

    [outcome] = sender.send([email()])

    assert (outcome.status, outcome.error_code) == ("retryable", "sendgrid_429")
    assert outcome.retry_after is not None and 29 <= outcome.retry_after <= 31


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retryable(fake: FakeSendGrid, sender: SendGridEmailSender, status: int) -> None:
    fake.fail_next(status)

    [outcome] = sender.send([email()])

    assert (outcome.status, outcome.error_code) == ("retryable", f"sendgrid_{status}")


def test_a_hang_beyond_the_client_timeout_is_a_retryable_timeout(fake: FakeSendGrid) -> None:
    fake.hang_next(5)
    sender = make_sender(fake, timeout=0.2)
    started = time.monotonic()

    [outcome] = sender.send([email()])

    sender.close()
    assert (outcome.status, outcome.error_code) == ("retryable", "timeout")
    assert time.monotonic() - started < 2


def test_connection_refused_is_retryable(fake: FakeSendGrid) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    sender = make_sender(fake, host=f"http://127.0.0.1:{closed_port}")

    [outcome] = sender.send([email()])

    sender.close()
    assert (outcome.status, outcome.error_code) == ("retryable", "connection")


def test_a_wrong_api_key_fails_as_configuration(fake: FakeSendGrid) -> None:
    sender = make_sender(fake, api_key="SG.not-the-right-key")

    [outcome] = sender.send([email()])

    sender.close()
    assert (outcome.status, outcome.error_code, outcome.invalid_recipient) == ("failed", "sendgrid_401", False)
    assert "authorization grant is invalid" in (outcome.detail or "")


def test_sandbox_mode_is_sent_and_accepted_without_delivery(fake: FakeSendGrid) -> None:
    sender = make_sender(fake, sandbox_mode=True)

    [outcome] = sender.send([email()])

    sender.close()
    assert outcome.status == "accepted"
    assert fake.received()[0].body["mail_settings"] == {"sandbox_mode": {"enable": True}}


def test_an_email_sendgrid_would_refuse_fails_alone_without_a_request(
    fake: FakeSendGrid, sender: SendGridEmailSender
) -> None:
    ok, huge, blank = sender.send([email(), email("k-huge", run_id="r" * 10_000), email("k-blank", subject=" ")])

    assert ok.status == "accepted"
    assert (huge.status, huge.error_code, huge.invalid_recipient) == ("failed", "invalid_message", False)
    assert "'k-huge'" in (huge.detail or "") and "custom_args" in (huge.detail or "")
    assert (blank.status, blank.error_code) == ("failed", "invalid_message")
    assert "'k-blank'" in (blank.detail or "") and "empty subject" in (blank.detail or "")
    [request] = fake.received()
    assert request.body["personalizations"][0]["custom_args"]["send_key"] == "k-1"


def test_a_repeated_send_key_raises_before_any_request(fake: FakeSendGrid, sender: SendGridEmailSender) -> None:
    with pytest.raises(ValueError, match="'k-1' appears more than once"):
        sender.send([email(), email()])

    assert fake.received() == []
