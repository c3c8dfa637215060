"""SendGridEmailSender batches emails into personalizations: through the real SDK, over HTTP, to the loopback fake.

What each recipient got is read from the fake's `accepted()`, with the substitutions applied as SendGrid applies
them; the requests themselves from `received()`.
"""

import math
import time

import pytest

from engine.fakes import FakeSendGrid
from engine.fakes.sendgrid import AcceptedMail
from engine.providers.limits import SENDGRID_MAX_SUBSTITUTIONS_BYTES, json_bytes
from engine.providers.messages import Email
from engine.providers.sendgrid_email import HTML_TAG, TEXT_TAG, SendGridEmailSender
from tests.sendgrid_sender import fake_sendgrid, make_sender, sendgrid_sender  # noqa: F401 (fixtures)


def email(i: int, **overrides: object) -> Email:
    """Email number `i`, rendered for user i: its subject, text and html are its own."""
    fields: dict[str, object] = {
        "send_key": f"k-{i}",
        "run_id": "run-7",
        "to": f"user{i}@example.com",
        "subject": f"User {i}, your basket misses you",
        "html": f"<p>Hello user {i} &amp; welcome back</p>",
        "text": f"Hello user {i}",
        "categories": ("journey:winback", "template:cart_reminder"),
    } | overrides
    return Email(**fields)  # type: ignore[arg-type]


def delivered(fake: FakeSendGrid) -> dict[str, AcceptedMail]:
    """What the fake accepted, by send key."""
    return {mail.custom_args["send_key"]: mail for mail in fake.accepted()}


def request_keys(fake: FakeSendGrid) -> list[list[str]]:
    """The send keys of each request, in its personalizations' order."""
    return [[p["custom_args"]["send_key"] for p in r.body["personalizations"]] for r in fake.received("/v3/mail/send")]


def email_of_substitutions(i: int, size: int) -> Email:
    """Email `i` padded so that its substitutions take exactly `size` bytes."""
    small = email(i, html="")
    padding = size - json_bytes({TEXT_TAG: small.text, HTML_TAG: ""})
    return email(i, html="x" * padding)


@pytest.mark.parametrize(("batch_size", "requests"), [(500, 1), (100, 3)])
def test_250_emails_go_in_few_requests_and_each_user_gets_their_own(
    fake: FakeSendGrid, batch_size: int, requests: int
) -> None:
    emails = [email(i) for i in range(250)]
    sender = make_sender(fake, batch_size=batch_size)

    outcomes = sender.send(emails)

    sender.close()
    assert [r.status for r in fake.received()] == [202] * requests and requests == math.ceil(250 / batch_size)
    assert [o.send_key for o in outcomes] == [e.send_key for e in emails]
    assert {o.status for o in outcomes} == {"accepted"}
    got = delivered(fake)
    assert len(got) == 250
    for e, outcome in zip(emails, outcomes, strict=True):
        mail = got[e.send_key]
        assert (mail.email, mail.subject, mail.text, mail.html) == (e.to, e.subject, e.text, e.html)
        assert mail.custom_args == {"send_key": e.send_key, "run_id": "run-7"}
        assert mail.categories == e.categories
        assert outcome.provider_message_id == mail.message_id


def test_a_batch_carries_tags_in_its_content_and_each_email_in_its_personalization(
    fake: FakeSendGrid, sender: SendGridEmailSender
) -> None:
    sender.send([email(1), email(2)])

    [request] = fake.received()
    body = request.body
    assert "subject" not in body, "every personalization has its own"
    assert body["content"] == [{"type": "text/plain", "value": TEXT_TAG}, {"type": "text/html", "value": HTML_TAG}]
    assert body["personalizations"][1] == {
        "to": [{"email": "user2@example.com"}],
        "subject": "User 2, your basket misses you",
        "custom_args": {"send_key": "k-2", "run_id": "run-7"},
        "substitutions": {TEXT_TAG: "Hello user 2", HTML_TAG: "<p>Hello user 2 &amp; welcome back</p>"},
    }
    assert body["categories"] == ["journey:winback", "template:cart_reminder"]
    assert body["from"] == {"email": "hello@example.com", "name": "Nudge"}


def test_an_email_over_the_substitution_limit_goes_alone_with_its_content_inline(
    fake: FakeSendGrid, sender: SendGridEmailSender
) -> None:
    at_limit = email_of_substitutions(1, SENDGRID_MAX_SUBSTITUTIONS_BYTES)
    over = email_of_substitutions(2, SENDGRID_MAX_SUBSTITUTIONS_BYTES + 1)

    outcomes = sender.send([email(0), at_limit, over, email(3)])

    assert {o.status for o in outcomes} == {"accepted"}
    assert sorted(request_keys(fake)) == [["k-0", "k-1", "k-3"], ["k-2"]]
    [alone] = [r.body for r in fake.received() if len(r.body["personalizations"]) == 1]
    assert alone["subject"] == over.subject and "substitutions" not in alone["personalizations"][0]
    assert alone["content"][1]["value"] == over.html
    assert (delivered(fake)["k-1"].html, delivered(fake)["k-2"].html) == (at_limit.html, over.html)


def test_an_email_containing_a_tag_goes_alone(fake: FakeSendGrid, sender: SendGridEmailSender) -> None:
    quoting = email(1, text=f"Our tags look like {HTML_TAG}")

    outcomes = sender.send([email(0), quoting, email(2)])

    assert {o.status for o in outcomes} == {"accepted"}
    assert sorted(request_keys(fake)) == [["k-0", "k-2"], ["k-1"]]
    assert delivered(fake)["k-1"].text == quoting.text


def test_two_emails_to_one_address_go_in_different_requests(fake: FakeSendGrid, sender: SendGridEmailSender) -> None:
    emails = [email(0), email(1, to="Same@Example.com"), email(2), email(3, to="same@example.com"), email(4)]

    outcomes = sender.send(emails)

    assert {o.status for o in outcomes} == {"accepted"}
    assert sorted(request_keys(fake)) == [["k-0", "k-1", "k-2", "k-4"], ["k-3"]]
    assert len(fake.accepted()) == 5


def test_emails_that_differ_in_categories_or_content_kinds_go_in_different_requests(
    fake: FakeSendGrid, sender: SendGridEmailSender
) -> None:
    emails = [email(0), email(1, categories=("other",)), email(2, html=""), email(3), email(4, text="")]

    sender.send(emails)

    assert sorted(request_keys(fake)) == [["k-0", "k-3"], ["k-1"], ["k-2"], ["k-4"]]
    got = delivered(fake)
    assert (got["k-2"].html, got["k-2"].text) == (None, "Hello user 2")
    assert (got["k-4"].html, got["k-4"].text) == (emails[4].html, None)


def test_an_invalid_email_fails_alone_and_the_rest_share_a_request(
    fake: FakeSendGrid, sender: SendGridEmailSender
) -> None:
    emails = [email(0), email(1, subject=" "), email(2), email(3, run_id="r" * 10_000), email(4)]

    outcomes = sender.send(emails)

    assert [(o.send_key, o.status, o.error_code) for o in outcomes] == [
        ("k-0", "accepted", None),
        ("k-1", "failed", "invalid_message"),
        ("k-2", "accepted", None),
        ("k-3", "failed", "invalid_message"),
        ("k-4", "accepted", None),
    ]
    assert request_keys(fake) == [["k-0", "k-2", "k-4"]]


def test_a_429_for_a_batch_makes_every_email_of_it_retryable_after_the_reset(
    fake: FakeSendGrid, sender: SendGridEmailSender
) -> None:
    fake.fail_next(429, reset_in=30)

    outcomes = sender.send([email(i) for i in range(5)])

    assert {(o.status, o.error_code) for o in outcomes} == {("retryable", "sendgrid_429")}
    assert all(o.retry_after is not None and 29 <= o.retry_after <= 31 for o in outcomes)
    assert len(fake.received()) == 1 and fake.accepted() == []


def test_a_500_for_one_batch_makes_only_its_emails_retryable(fake: FakeSendGrid) -> None:
    fake.fail_next(500)
    sender = make_sender(fake, batch_size=3, max_workers=1)  # one request at a time: the first batch gets the 500

    outcomes = sender.send([email(i) for i in range(6)])

    sender.close()
    assert [(o.status, o.error_code) for o in outcomes] == [("retryable", "sendgrid_500")] * 3 + [
        ("accepted", None)
    ] * 3
    assert sorted(delivered(fake)) == ["k-3", "k-4", "k-5"]


def test_a_timeout_leaves_every_email_of_the_batch_in_doubt(fake: FakeSendGrid) -> None:
    fake.hang_next(2)
    sender = make_sender(fake, timeout=0.3)

    outcomes = sender.send([email(i) for i in range(4)])

    sender.close()
    assert {(o.status, o.error_code) for o in outcomes} == {("retryable", "timeout")}


def test_a_batch_refused_with_400_is_sent_again_email_by_email(fake: FakeSendGrid, sender: SendGridEmailSender) -> None:
    """The fake refuses an address without a domain, which our checks let through: the whole batch is refused."""
    emails = [email(0), email(1, to="user1-at-nowhere"), email(2), email(3)]

    outcomes = sender.send(emails)

    assert [(o.status, o.error_code, o.invalid_recipient) for o in outcomes] == [
        ("accepted", None, False),
        ("failed", "sendgrid_400", True),
        ("accepted", None, False),
        ("accepted", None, False),
    ]
    assert "personalizations.0.to.0.email" in (outcomes[1].detail or "")
    statuses = [r.status for r in fake.received()]
    assert statuses[0] == 400 and sorted(statuses[1:]) == [202, 202, 202, 400]
    assert request_keys(fake)[0] == ["k-0", "k-1", "k-2", "k-3"]
    assert sorted(delivered(fake)) == ["k-0", "k-2", "k-3"]


def test_a_scripted_400_for_a_batch_fails_no_email_once_each_is_sent_alone(
    fake: FakeSendGrid, sender: SendGridEmailSender
) -> None:
    fake.fail_next(400)

    outcomes = sender.send([email(i) for i in range(3)])

    assert {o.status for o in outcomes} == {"accepted"}
    assert [r.status for r in fake.received()] == [400, 202, 202, 202]


def test_a_wrong_key_fails_the_batch_as_configuration_without_sending_each_again(fake: FakeSendGrid) -> None:
    sender = make_sender(fake, api_key="SG.not-the-right-key")

    outcomes = sender.send([email(i) for i in range(3)])

    sender.close()
    assert {(o.status, o.error_code) for o in outcomes} == {("failed", "sendgrid_401")}
    assert len(fake.received()) == 1


def test_several_batches_are_in_flight_at_once(fake: FakeSendGrid) -> None:
    fake.hang_next(0.5, count=3)
    sender = make_sender(fake, batch_size=10)
    started = time.monotonic()

    outcomes = sender.send([email(i) for i in range(30)])

    sender.close()
    assert {o.status for o in outcomes} == {"accepted"}
    assert len(fake.received()) == 3
    assert time.monotonic() - started < 1.4, "the three hung requests waited together"


def test_a_sandboxed_batch_is_validated_and_not_delivered(fake: FakeSendGrid) -> None:
    sender = make_sender(fake, sandbox_mode=True)

    outcomes = sender.send([email(i) for i in range(3)])

    sender.close()
    assert {o.status for o in outcomes} == {"accepted"}
    [request] = fake.received()
    assert request.status == 200 and request.body["mail_settings"] == {"sandbox_mode": {"enable": True}}
    assert fake.accepted() == []


@pytest.mark.parametrize("batch_size", [0, 1001])
def test_a_batch_size_sendgrid_would_refuse_is_refused_at_once(fake: FakeSendGrid, batch_size: int) -> None:
    with pytest.raises(ValueError, match="batch_size must be from 1 to 1000"):
        make_sender(fake, batch_size=batch_size)
