"""The SendGrid fake on the wire: auth, validation, scripted answers, rate limits, bounces, records."""

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sendgrid.helpers.eventwebhook import EventWebhook, EventWebhookHeader

from engine.fakes import FakeSendGrid
from engine.fakes.sendgrid import DEFAULT_API_KEY

MAIL = {
    "personalizations": [{"to": [{"email": "ada@example.com"}], "custom_args": {"send_key": "k-1", "run_id": "r"}}],
    "from": {"email": "hello@example.com"},
    "subject": "Hi",
    "content": [{"type": "text/plain", "value": "hi"}, {"type": "text/html", "value": "<p>hi</p>"}],
    "categories": ["winback"],
}


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    with FakeSendGrid() as server:
        yield server


def call(
    url: str, body: Any = None, *, key: str | None = DEFAULT_API_KEY, method: str = "POST"
) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            status, reply_headers, raw = reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        status, reply_headers, raw = error.code, dict(error.headers), error.read()
    return status, reply_headers, json.loads(raw) if raw else None


def send(fake: FakeSendGrid, body: Any = MAIL, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    return call(f"{fake.url}/v3/mail/send", body, **kwargs)


def test_a_valid_mail_is_accepted_with_a_message_id_and_no_body(fake: FakeSendGrid) -> None:
    status, headers, body = send(fake)

    assert (status, body) == (202, None)
    assert len(headers["X-Message-Id"]) == 22


@pytest.mark.parametrize("key", [None, "SG.someone-else"])
def test_a_missing_or_wrong_key_gets_401_in_sendgrids_error_shape(fake: FakeSendGrid, key: str | None) -> None:
    status, _, body = send(fake, key=key)

    assert status == 401
    assert body == {
        "errors": [
            {"message": "The provided authorization grant is invalid, expired, or revoked", "field": None, "help": None}
        ]
    }


def test_validation_reports_every_problem_with_its_field(fake: FakeSendGrid) -> None:
    bad = {"personalizations": [{"to": [{"email": "nope"}]}], "content": [{"type": "text/html", "value": ""}]}

    status, _, body = send(fake, bad)

    assert status == 400
    fields = [e["field"] for e in body["errors"]]
    assert fields == ["personalizations.0.to.0.email", "from.email", "subject", "content.0.value"]
    assert all(e["message"] and e["help"].startswith("http://sendgrid.com/docs/") for e in body["errors"])


def test_missing_personalizations_and_oversized_custom_args_are_refused(fake: FakeSendGrid) -> None:
    status, _, body = send(fake, {**MAIL, "personalizations": [], "custom_args": {"x": "y" * 10_000}})

    assert status == 400
    assert [e["field"] for e in body["errors"]] == ["personalizations", "custom_args"]


def test_plain_text_must_come_first(fake: FakeSendGrid) -> None:
    reordered = {**MAIL, "content": list(reversed(MAIL["content"]))}

    status, _, body = send(fake, reordered)

    assert (status, [e["field"] for e in body["errors"]]) == (400, ["content.0.type"])


def test_scripted_answers_are_used_in_order_then_normal_service_resumes(fake: FakeSendGrid) -> None:
    fake.fail_next(500)
    fake.fail_next(429, reset_in=10)

    first, second, third = send(fake), send(fake), send(fake)

    assert first[0] == 500
    assert second[0] == 429
    assert int(second[1]["X-RateLimit-Reset"]) >= time.time() + 9
    assert second[1]["X-RateLimit-Remaining"] == "0"
    assert third[0] == 202
    assert [r.status for r in fake.received()] == [500, 429, 202]


def test_a_scripted_hang_delays_the_answer(fake: FakeSendGrid) -> None:
    fake.hang_next(0.3)
    started = time.monotonic()

    status, _, _ = send(fake)

    assert status == 202 and time.monotonic() - started >= 0.3


def test_the_rate_limit_answers_429_on_its_own_and_flags_early_requests() -> None:
    with FakeSendGrid(rate_limit=(2, 3600), early_grace=0.0) as fake:
        statuses = [send(fake)[0] for _ in range(3)]
        _, headers, _ = send(fake)

        assert statuses == [202, 202, 429]
        assert headers["X-RateLimit-Limit"] == "2"
        assert int(headers["X-RateLimit-Reset"]) % 3600 == 0
        assert len(fake.early_requests()) == 1  # the fourth came before the reset the third was told


def test_requests_after_the_reset_are_not_early(fake: FakeSendGrid) -> None:
    fake.fail_next(429, reset_in=0)

    send(fake)
    time.sleep(max(0.0, int(time.time()) + 1 - time.time()))
    send(fake)

    assert fake.early_requests() == []


def test_bounced_addresses_are_accepted_and_leave_an_event(fake: FakeSendGrid) -> None:
    fake.bounce("Ada@Example.com")

    status, headers, _ = send(fake)
    _, _, events = call(f"{fake.url}/_fake/events", method="GET", key=None)

    assert status == 202
    assert events == fake.events()
    [event] = events
    assert event["event"] == "bounce" and event["email"] == "ada@example.com"
    assert (event["send_key"], event["run_id"]) == ("k-1", "r")
    assert event["sg_message_id"].startswith(headers["X-Message-Id"])
    assert event["category"] == ["winback"]


def test_requests_are_recorded_in_memory_over_http_and_in_a_jsonl_file(tmp_path: Path) -> None:
    record_file = tmp_path / "requests.jsonl"
    with FakeSendGrid(record_file=record_file) as fake:
        send(fake)
        send(fake, key="SG.wrong")
        _, _, over_http = call(f"{fake.url}/_fake/requests", method="GET", key=None)
        in_memory = fake.received()

    from_file = [json.loads(line) for line in record_file.read_text().splitlines()]
    assert [r.status for r in in_memory] == [202, 401]
    assert over_http == from_file
    assert [(r["method"], r["path"], r["status"]) for r in from_file] == [
        ("POST", "/v3/mail/send", 202),
        ("POST", "/v3/mail/send", 401),
    ]
    assert from_file[0]["body"] == MAIL
    assert from_file[0]["headers"]["Authorization"] == f"Bearer {DEFAULT_API_KEY}"
    assert from_file[0]["timestamp"] <= from_file[1]["timestamp"]


def test_the_port_is_released_on_stop() -> None:
    fake = FakeSendGrid().start()
    port = int(fake.url.rsplit(":", 1)[1])
    fake.stop()

    with FakeSendGrid(port=port) as again:
        assert again.url.endswith(f":{port}")


def test_webhook_events_are_shaped_like_sendgrids_for_the_mail_the_fake_accepted(fake: FakeSendGrid) -> None:
    _, headers, _ = send(fake)
    send(
        fake,
        {
            **MAIL,
            "categories": ["a", "b"],
            "personalizations": [{**MAIL["personalizations"][0], "custom_args": {"send_key": "k-2"}}],
        },
    )

    [click] = fake.webhook_events_for(["k-1"], "click", timestamp=1_790_000_000, url="https://example.com/x")
    [bounce] = fake.webhook_events_for(["k-2"], "bounce", timestamp=1_790_000_001)

    assert click["event"] == "click" and click["email"] == "ada@example.com"
    assert (click["send_key"], click["run_id"], click["timestamp"]) == ("k-1", "r", 1_790_000_000)
    assert click["sg_message_id"].startswith(headers["X-Message-Id"])
    assert click["url"] == "https://example.com/x" and "useragent" in click and "smtp-id" not in click
    assert click["category"] == "winback"  # one category comes as a string, several as an array
    assert bounce["category"] == ["a", "b"] and bounce["status"] == "5.1.1" and "smtp-id" in bounce
    assert click["sg_event_id"] != bounce["sg_event_id"]
    assert [m.custom_args.get("send_key") for m in fake.accepted()] == ["k-1", "k-2"]


def test_webhook_events_exist_only_for_accepted_mail_and_known_types(fake: FakeSendGrid) -> None:
    send(fake, {**MAIL, "mail_settings": {"sandbox_mode": {"enable": True}}})  # validated, never delivered

    with pytest.raises(ValueError, match="accepted no mail with send_key 'k-1'"):
        fake.webhook_events_for(["k-1"], "delivered", timestamp=0)
    with pytest.raises(ValueError, match="unknown SendGrid event 'opened'"):
        fake.webhook_events_for(["k-1"], "opened", timestamp=0)


def test_webhook_batches_are_signed_as_sendgrid_signs_them(fake: FakeSendGrid) -> None:
    send(fake)
    body, headers = fake.signed_webhook_batch(fake.webhook_events_for(["k-1"], "open", timestamp=5), timestamp=7)
    helper = EventWebhook(fake.webhook_public_key())
    signature, timestamp = headers[EventWebhookHeader.SIGNATURE], headers[EventWebhookHeader.TIMESTAMP]

    assert json.loads(body)[0]["event"] == "open" and timestamp == "7"
    assert helper.verify_signature(body.decode(), signature, timestamp)
    assert not helper.verify_signature(body.decode(), signature, "8")
    assert not helper.verify_signature(body.decode().replace("open", "click"), signature, timestamp)
    assert not EventWebhook(FakeSendGrid().webhook_public_key()).verify_signature(body.decode(), signature, timestamp)


def batch_of(*people: tuple[str, str, str]) -> dict[str, Any]:
    """One request for several recipients, each with its own subject, send key and body (as substitutions)."""
    return {
        **MAIL,
        "subject": "never delivered: every personalization has its own",
        "content": [{"type": "text/plain", "value": "-text-"}, {"type": "text/html", "value": "<p>-html-</p>"}],
        "personalizations": [
            {
                "to": [{"email": address}],
                "subject": f"Hi {name}",
                "custom_args": {"send_key": key, "run_id": "r"},
                "substitutions": {"-text-": f"Hello {name}", "-html-": f"Hello <b>{name}</b>"},
            }
            for address, name, key in people
        ],
    }


def test_a_batch_delivers_each_recipient_its_own_substituted_subject_and_content(fake: FakeSendGrid) -> None:
    status, headers, _ = send(fake, batch_of(("ada@example.com", "Ada", "k-1"), ("bob@example.com", "Bob", "k-2")))

    assert status == 202
    delivered = [(m.email, m.subject, m.text, m.html, m.custom_args["send_key"]) for m in fake.accepted()]
    assert delivered == [
        ("ada@example.com", "Hi Ada", "Hello Ada", "<p>Hello <b>Ada</b></p>", "k-1"),
        ("bob@example.com", "Hi Bob", "Hello Bob", "<p>Hello <b>Bob</b></p>", "k-2"),
    ]
    [request] = fake.received()
    assert request.body["content"][0]["value"] == "-text-", "the record is the wire's, tags and all"
    [click] = fake.webhook_events_for(["k-2"], "click", timestamp=1_790_000_000)
    assert (click["email"], click["send_key"]) == ("bob@example.com", "k-2")
    assert click["sg_message_id"] == f"{headers['X-Message-Id']}.filter0001.1.0"


def test_substitution_is_one_pass_and_a_lone_mail_keeps_its_content_as_sent(fake: FakeSendGrid) -> None:
    nested = batch_of(("ada@example.com", "-html-", "k-1"))

    send(fake, nested)
    send(fake)

    first, plain = fake.accepted()
    assert first.text == "Hello -html-", "a value is not searched for tags"
    assert (plain.subject, plain.text, plain.html) == ("Hi", "hi", "<p>hi</p>")


def test_an_address_repeated_across_personalizations_is_refused_as_sendgrid_refuses_it(fake: FakeSendGrid) -> None:
    status, _, body = send(fake, batch_of(("ada@example.com", "Ada", "k-1"), ("ADA@example.com", "Ada", "k-2")))

    assert status == 400
    assert body["errors"] == [
        {
            "field": "personalizations.1",
            "message": "Each email address in the personalization block should be unique between to, cc, and bcc. "
            "We found the first duplicate instance of [ada@example.com] in the personalizations.1.to field.",
            "help": "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message.personalizations.1",
        }
    ]
    assert fake.accepted() == []


def test_substitutions_over_10000_bytes_are_refused(fake: FakeSendGrid) -> None:
    big = batch_of(("ada@example.com", "A" * 5_000, "k-1"), ("bob@example.com", "Bob", "k-2"))

    status, _, body = send(fake, big)

    assert (status, [e["field"] for e in body["errors"]]) == (400, ["personalizations.0.substitutions"])


def test_a_429_makes_every_key_of_its_request_early_until_the_reset(fake: FakeSendGrid) -> None:
    fake.fail_next(429, reset_in=30)
    send(fake, batch_of(("ada@example.com", "Ada", "k-1"), ("bob@example.com", "Bob", "k-2")))

    send(fake, batch_of(("bob@example.com", "Bob", "k-2")))  # the second key of the refused request, too soon

    assert [r.body["personalizations"][0]["custom_args"]["send_key"] for r in fake.early_requests()] == ["k-2"]
