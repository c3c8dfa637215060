"""Provider limits checked before the wire: an invalid message fails alone, its neighbours still go out.

Each limit is checked at its edge against the loopback fakes, which enforce the same limits the way the
providers do: one byte under is accepted by the fake, one byte over never reaches it.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.fakes import FakeFcm, FakeSendGrid
from engine.fakes.sendgrid import validate_mail
from engine.providers.fcm_push import FcmPushSender
from engine.providers.limits import (
    FCM_MAX_PAYLOAD_BYTES,
    SENDGRID_CUSTOM_ARGS_BYTES_BELOW,
    SENDGRID_MAX_SUBSTITUTIONS_BYTES,
    fcm_payload_bytes,
    json_bytes,
    sendgrid_request_problems,
)
from engine.providers.messages import Email, Push
from engine.providers.sendgrid_email import SendGridEmailSender


@pytest.fixture(scope="module")
def fcm() -> Iterator[FakeFcm]:
    with FakeFcm() as server:
        yield server


@pytest.fixture(scope="module")
def pusher(fcm: FakeFcm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FcmPushSender]:
    account = fcm.write_service_account(tmp_path_factory.mktemp("fcm") / "service-account.json")
    sender = FcmPushSender(account, endpoint=fcm.url)
    yield sender
    sender.close()


@pytest.fixture
def sendgrid() -> Iterator[FakeSendGrid]:
    with FakeSendGrid() as server:
        yield server


@pytest.fixture
def mailer(sendgrid: FakeSendGrid) -> Iterator[SendGridEmailSender]:
    sender = SendGridEmailSender(
        api_key=sendgrid.api_key, host=sendgrid.url, from_email="hello@example.com", from_name=None, timeout=5.0
    )
    yield sender
    sender.close()


def push(key: str, body: str = "Your bakery has a coupon", **overrides: Any) -> Push:
    fields: dict[str, Any] = {
        "send_key": key,
        "run_id": "run-7",
        "token": f"token-{key}",
        "title": "Fresh bread",
        "body": body,
        "data": {"deep_link": "nudge://coupons/42"},
    } | overrides
    return Push(**fields)


def wire_payload(p: Push) -> int:
    """The payload size of `p` as the sender will put it on the wire."""
    data = {**p.data, "send_key": p.send_key, "run_id": p.run_id}
    return fcm_payload_bytes(data, {"title": p.title, "body": p.body})


def push_of_payload(key: str, size: int) -> Push:
    """A push whose payload is exactly `size` bytes (ASCII padding of the body)."""
    short = push(key, body="")
    return push(key, body="x" * (size - wire_payload(short)))


def email(key: str, run_id: str = "run-7", to: str | None = None) -> Email:
    return Email(key, run_id, to or f"{key}@example.com", "Your basket misses you", "<p>Hi</p>", "Hi", ("winback",))


def sent_push_keys(fcm: FakeFcm) -> list[str]:
    return sorted(m["data"]["send_key"] for m in fcm.sent_messages())


def sent_email_keys(sendgrid: FakeSendGrid) -> list[str]:
    return sorted(mail.custom_args["send_key"] for mail in sendgrid.accepted())


def test_an_oversized_push_fails_locally_and_its_neighbours_arrive(fcm: FakeFcm, pusher: FcmPushSender) -> None:
    fcm.clear()
    pushes = [push("p-1"), push("p-big", body="x" * 4000, data={"blob": "y" * 500}), push("p-3")]

    ok, big, also_ok = pusher.send(pushes)

    assert (ok.status, also_ok.status) == ("accepted", "accepted")
    assert (big.status, big.error_code, big.invalid_recipient) == ("failed", "invalid_message", False)
    assert "'p-big'" in (big.detail or "")
    assert f"{wire_payload(pushes[1]):,} bytes, more than 4,096" in (big.detail or "")
    assert sent_push_keys(fcm) == ["p-1", "p-3"]
    assert all(r.body["message"]["data"]["send_key"] != "p-big" for r in fcm.received("/v1/"))


def test_the_payload_limit_is_counted_as_the_fake_counts_it(fcm: FakeFcm, pusher: FcmPushSender) -> None:
    """At exactly 4096 bytes the fake accepts; one byte more never leaves the sender."""
    fcm.clear()
    at_limit, over = (
        push_of_payload("p-at", FCM_MAX_PAYLOAD_BYTES),
        push_of_payload("p-over", FCM_MAX_PAYLOAD_BYTES + 1),
    )
    assert (wire_payload(at_limit), wire_payload(over)) == (4096, 4097)

    sent, refused = pusher.send([at_limit, over])

    assert sent.status == "accepted"
    assert (refused.status, refused.error_code) == ("failed", "invalid_message")
    [message] = fcm.sent_messages()
    assert message["data"]["send_key"] == "p-at"
    assert fcm_payload_bytes(message["data"], message["notification"]) == 4096, "measured as it went on the wire"


def test_a_push_firebase_admin_refuses_fails_without_failing_the_batch(fcm: FakeFcm, tmp_path: Path) -> None:
    """firebase-admin refuses a whole send_each for one message it cannot encode; the sender finds which."""
    fcm.clear()
    account = fcm.write_service_account(tmp_path / "service-account.json")
    negative_ttl = FcmPushSender(account, endpoint=fcm.url, ttl_seconds=-1)

    outcomes = negative_ttl.send([push("p-1"), push("p-2")])

    negative_ttl.close()
    assert {(o.status, o.error_code) for o in outcomes} == {("failed", "invalid_message")}
    assert [o.send_key for o in outcomes] == ["p-1", "p-2"]
    assert "firebase-admin refuses it" in (outcomes[0].detail or "") and "ttl" in (outcomes[0].detail or "")
    assert fcm.received("/v1/") == []


def test_non_ascii_counts_as_escaped_on_the_wire(fcm: FakeFcm, pusher: FcmPushSender) -> None:
    """An é travels as \\u00e9: 700 of them (1,400 UTF-8 bytes) take 4,200 bytes, and FCM's fake refuses that too."""
    fcm.clear()
    accented = push("p-accent", body="é" * 700)

    [outcome] = pusher.send([accented])

    assert outcome.error_code == "invalid_message"
    assert wire_payload(accented) > FCM_MAX_PAYLOAD_BYTES
    assert fcm.received("/v1/") == []


def test_custom_args_over_the_limit_fail_locally_and_neighbours_arrive(
    sendgrid: FakeSendGrid, mailer: SendGridEmailSender
) -> None:
    ok, huge, also_ok = mailer.send([email("k-1"), email("k-huge", run_id="r" * 10_000), email("k-3")])

    assert (ok.status, also_ok.status) == ("accepted", "accepted")
    assert (huge.status, huge.error_code, huge.invalid_recipient) == ("failed", "invalid_message", False)
    assert "'k-huge'" in (huge.detail or "") and "custom_args" in (huge.detail or "")
    assert sent_email_keys(sendgrid) == ["k-1", "k-3"]


def test_custom_args_one_byte_under_the_limit_are_accepted_by_the_fake(
    sendgrid: FakeSendGrid, mailer: SendGridEmailSender
) -> None:
    def with_args_of(key: str, size: int) -> Email:
        padding = size - json_bytes({"send_key": key, "run_id": ""})
        return email(key, run_id="r" * padding)

    under = with_args_of("k-under", SENDGRID_CUSTOM_ARGS_BYTES_BELOW - 1)
    at = with_args_of("k-at", SENDGRID_CUSTOM_ARGS_BYTES_BELOW)

    sent, refused = mailer.send([under, at])

    assert sent.status == "accepted"
    assert (refused.status, refused.error_code) == ("failed", "invalid_message")
    assert sent_email_keys(sendgrid) == ["k-under"]


def body_of(personalizations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "personalizations": personalizations,
        "from": {"email": "hello@example.com"},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": "Hi"}],
    }


def test_a_request_of_1000_personalizations_passes_and_1001_does_not() -> None:
    full = body_of([{"to": [{"email": f"u{i}@example.com"}]} for i in range(1000)])
    over = body_of([{"to": [{"email": f"u{i}@example.com"}]} for i in range(1001)])

    assert sendgrid_request_problems(full) == []
    assert any("1001 personalizations" in p for p in sendgrid_request_problems(over))
    # The fake, which answers as SendGrid does, draws the line at the same place.
    assert validate_mail(full) == [] and validate_mail(over) != []


def test_recipients_are_counted_over_to_cc_and_bcc_of_every_personalization() -> None:
    def addresses(start: int, count: int) -> list[dict[str, str]]:
        return [{"email": f"u{i}@example.com"} for i in range(start, start + count)]

    full = body_of(
        [{"to": addresses(0, 400), "cc": addresses(400, 300)}, {"to": addresses(700, 1), "bcc": addresses(701, 299)}]
    )
    over = body_of(
        [{"to": addresses(0, 400), "cc": addresses(400, 300)}, {"to": addresses(700, 1), "bcc": addresses(701, 300)}]
    )

    assert sendgrid_request_problems(full) == []
    assert sendgrid_request_problems(over) == ["1001 recipients (to + cc + bcc) in one request, more than 1000"]


@pytest.mark.parametrize(
    "personalizations",
    [
        [{"to": [{"email": "ada@example.com"}], "cc": [{"email": "ADA@example.com"}]}],
        [
            {"to": [{"email": "ada@example.com"}]},
            {"to": [{"email": "bob@example.com"}], "bcc": [{"email": "ada@example.com"}]},
        ],
    ],
    ids=["same personalization, other case", "across personalizations"],
)
def test_an_address_repeated_within_a_request_is_refused(personalizations: list[dict[str, Any]]) -> None:
    assert sendgrid_request_problems(body_of(personalizations)) == [
        "address 'ada@example.com' appears more than once in one request's to/cc/bcc"
    ]


def test_substitutions_of_10000_bytes_pass_and_one_byte_more_does_not() -> None:
    def with_substitutions_of(size: int) -> dict[str, Any]:
        padding = size - json_bytes({"-tag-": ""})
        return body_of([{"to": [{"email": "ada@example.com"}], "substitutions": {"-tag-": "x" * padding}}])

    at, over = with_substitutions_of(SENDGRID_MAX_SUBSTITUTIONS_BYTES), with_substitutions_of(10_001)

    assert sendgrid_request_problems(at) == []
    assert sendgrid_request_problems(over) == ["substitutions of personalization 0 take 10,001 bytes, more than 10,000"]
    # The fake, which answers as SendGrid does, draws the line at the same place.
    assert validate_mail(at) == []
    assert [field for field, _ in validate_mail(over)] == ["personalizations.0.substitutions"]


def test_message_level_custom_args_count_with_each_personalizations() -> None:
    body = body_of([{"to": [{"email": "ada@example.com"}], "custom_args": {"send_key": "k"}}])
    body["custom_args"] = {"run_id": "r" * 9_990}

    [problem] = sendgrid_request_problems(body)

    assert problem.startswith("custom_args of personalization 0 take 10,0")


def test_every_problem_of_a_message_is_named_at_once(mailer: SendGridEmailSender, sendgrid: FakeSendGrid) -> None:
    bad = Email("k-bad", "r" * 10_000, " ", " ", "", "", tuple(f"c{i}" for i in range(11)))

    [outcome] = mailer.send([bad])

    detail = outcome.detail or ""
    assert detail.startswith("email 'k-bad' cannot be sent: ")
    for phrase in ("no recipient address", "empty subject", "neither text nor html", "custom_args", "11 categories"):
        assert phrase in detail
    assert sendgrid.received() == []


def test_a_push_the_sdk_would_refuse_fails_alone(fcm: FakeFcm, pusher: FcmPushSender) -> None:
    fcm.clear()

    ok, bad = pusher.send([push("p-1"), push("p-2", data={"count": 3})])

    assert ok.status == "accepted"
    assert (bad.error_code, bad.detail) == (
        "invalid_message",
        "push 'p-2' cannot be sent: data 'count' must map a string to a string",
    )
    assert sent_push_keys(fcm) == ["p-1"]


def test_limits_need_no_io() -> None:
    """A sender whose provider is unreachable still reports invalid messages as invalid, not as connection errors."""
    sender = SendGridEmailSender(
        api_key="SG.k", host="http://127.0.0.1:9", from_email="hello@example.com", from_name=None, timeout=1.0
    )
    [outcome] = sender.send([email("k-huge", run_id="r" * 10_000)])
    sender.close()

    assert outcome.error_code == "invalid_message"
