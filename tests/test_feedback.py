"""Provider feedback: SendGrid's signed Event Webhook verified, stored once, turned into facts, suppressions and events.

Mail goes out through the real SDK to the fake SendGrid, which then makes and signs webhook events about the
mail it accepted, as SendGrid would; the receiver runs against a real SQLite file.
"""

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from polars.testing import assert_frame_equal
from pydantic import ValidationError
from sendgrid.helpers.eventwebhook import EventWebhook, EventWebhookHeader
from sqlalchemy import Engine, func, select

from engine.db import connect, insert_new
from engine.fakes import FakeSendGrid
from engine.feedback.contract_events import FEEDBACK_FILE, feedback_events, write_feedback_partition
from engine.feedback.errors import MalformedBatch, SignatureRejected
from engine.feedback.receive import ReceiveResult, receive_sendgrid
from engine.feedback.settings import WebhookSettings
from engine.feedback.suppressions import suppressed
from engine.ingest import ingest_events, scan_events
from engine.providers.messages import Email
from engine.providers.sendgrid_email import SendGridEmailSender
from models.feedback import DeliveryFact, ProviderEvent, Suppression
from models.tables import OutboxMessage

NOW = datetime(2026, 10, 2, 9, 30, tzinfo=UTC)
T = int(NOW.timestamp())
SIGNATURE = EventWebhookHeader.SIGNATURE
TIMESTAMP = EventWebhookHeader.TIMESTAMP
USERS = ("u0", "u1", "u2")
KEYS = tuple(f"key-{user}" for user in USERS)
STRANGER = "key-not-ours"  # accepted by SendGrid, but sent by another system: no outbox row


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    with FakeSendGrid() as server:
        yield server


@pytest.fixture
def database(database_url: str) -> Engine:
    """A real database (SQLite, then PostgreSQL) whose outbox holds one accepted email per user."""
    engine = connect(database_url)
    rows = [
        {
            "send_key": key,
            "run_id": "run-1",
            "as_of": NOW - timedelta(hours=3),
            "journey": "abandoned_cart",
            "journey_version": "v1",
            "node": "email_reminder",
            "instance_id": f"i-{user}",
            "user_id": user,
            "channel": "email",
            "template": "cart_reminder",
            "recipient": f"{user}@example.com",
            "status": "accepted",
        }
        for user, key in zip(USERS, KEYS, strict=True)
    ]
    with engine.begin() as conn:
        insert_new(conn, OutboxMessage.__table__, rows)
    return engine


@pytest.fixture
def sent(fake: FakeSendGrid) -> None:
    """The outbox's emails (and one stranger's) sent through the real SDK, so the fake has accepted them."""
    sender = SendGridEmailSender(fake.api_key, fake.url, "hello@example.com", None, timeout=5.0)
    recipients = [(key, f"{user}@example.com") for user, key in zip(USERS, KEYS, strict=True)]
    emails = [
        Email(key, "run-1", to, "Your basket misses you", "<p>Hi</p>", "Hi", ("journey:abandoned_cart",))
        for key, to in [*recipients, (STRANGER, "Someone@Example.com")]
    ]
    try:
        assert {o.status for o in sender.send(emails)} == {"accepted"}
    finally:
        sender.close()


def receive(fake: FakeSendGrid, database: Engine, events: list[dict[str, Any]], **options: Any) -> ReceiveResult:
    """Sign `events` at T (or `signed_at`) and hand them to the receiver at NOW (or `now`)."""
    body, headers = fake.signed_webhook_batch(events, timestamp=options.get("signed_at", T))
    return receive_sendgrid(
        body, headers, now=options.get("now", NOW), public_key=fake.webhook_public_key(), database=database
    )


def count(database: Engine, model: Any) -> int:
    with database.connect() as conn:
        return conn.execute(select(func.count()).select_from(model.__table__)).scalar_one()


def rows(database: Engine, model: Any) -> list[dict[str, Any]]:
    with database.connect() as conn:
        return [dict(row) for row in conn.execute(select(model.__table__)).mappings()]


@pytest.mark.usefixtures("sent")
def test_a_signed_batch_from_the_fake_verifies_with_sendgrids_helper_and_is_stored(
    fake: FakeSendGrid, database: Engine
) -> None:
    events = fake.webhook_events_for(KEYS, "delivered", timestamp=T - 60)
    events += fake.webhook_events_for([KEYS[0]], "click", timestamp=T - 5, url="https://shop.example/cart")
    body, headers = fake.signed_webhook_batch(events, timestamp=T)

    helper = EventWebhook(fake.webhook_public_key())
    assert helper.verify_signature(body.decode(), headers[SIGNATURE], headers[TIMESTAMP])
    result = receive_sendgrid(body, headers, now=NOW, public_key=fake.webhook_public_key(), database=database)

    assert result == ReceiveResult(stored=4, duplicates=0)
    stored = {row["sg_event_id"]: row for row in rows(database, ProviderEvent)}
    assert set(stored) == {event["sg_event_id"] for event in events}
    click = stored[events[-1]["sg_event_id"]]
    assert (click["event"], click["email"], click["send_key"], click["run_id"]) == (
        "click",
        "u0@example.com",
        KEYS[0],
        "run-1",
    )
    assert click["timestamp"] == NOW - timedelta(seconds=5) and click["received_at"] == NOW
    assert json.loads(click["category"]) == ["journey:abandoned_cart"]  # SendGrid sent one category as a string
    assert json.loads(click["raw"]) == events[-1]


@pytest.mark.usefixtures("sent")
@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda body, headers: (body.replace(b"delivered", b"delivereD"), headers), id="altered-body"),
        pytest.param(lambda body, headers: (body, {**headers, TIMESTAMP: str(T - 1)}), id="other-timestamp"),
        pytest.param(lambda body, headers: (body, {**headers, SIGNATURE: "!!!not-base64"}), id="garbage-signature"),
        pytest.param(lambda body, headers: (body, {**headers, SIGNATURE: ""}), id="empty-signature"),
        pytest.param(lambda body, headers: (body, _without(headers, SIGNATURE)), id="no-signature-header"),
        pytest.param(lambda body, headers: (body, _without(headers, TIMESTAMP)), id="no-timestamp-header"),
        pytest.param(lambda body, headers: (b"\xff" + body, headers), id="not-utf8"),
    ],
)
def test_a_request_not_signed_by_sendgrid_is_refused_and_stores_nothing(
    fake: FakeSendGrid, database: Engine, tamper: Any
) -> None:
    body, headers = tamper(
        *fake.signed_webhook_batch(fake.webhook_events_for(KEYS, "delivered", timestamp=T), timestamp=T)
    )

    with pytest.raises(SignatureRejected):
        receive_sendgrid(body, headers, now=NOW, public_key=fake.webhook_public_key(), database=database)

    assert count(database, ProviderEvent) == count(database, DeliveryFact) == 0


@pytest.mark.usefixtures("sent")
def test_a_batch_signed_with_another_key_is_refused(fake: FakeSendGrid, database: Engine) -> None:
    with FakeSendGrid() as impostor:
        body, headers = impostor.signed_webhook_batch(fake.webhook_events_for(KEYS, "bounce", timestamp=T), timestamp=T)

    with pytest.raises(SignatureRejected):
        receive_sendgrid(body, headers, now=NOW, public_key=fake.webhook_public_key(), database=database)

    assert count(database, ProviderEvent) == count(database, Suppression) == 0


@pytest.mark.usefixtures("sent")
@pytest.mark.parametrize(("signed_ago", "accepted"), [(301, False), (-301, False), (300, True), (-300, True)])
def test_only_a_signature_within_300_seconds_of_now_is_accepted(
    fake: FakeSendGrid, database: Engine, signed_ago: int, accepted: bool
) -> None:
    events = fake.webhook_events_for(KEYS, "bounce", timestamp=T - 400)

    if accepted:
        assert receive(fake, database, events, signed_at=T - signed_ago).stored == 3
    else:
        with pytest.raises(SignatureRejected, match="more than 300 s"):
            receive(fake, database, events, signed_at=T - signed_ago)
        assert count(database, ProviderEvent) == count(database, Suppression) == 0


@pytest.mark.usefixtures("sent")
def test_a_replayed_batch_stores_each_event_once(fake: FakeSendGrid, database: Engine) -> None:
    events = fake.webhook_events_for(KEYS, "delivered", timestamp=T) + fake.webhook_events_for(
        KEYS[:1], "open", timestamp=T
    )

    first = receive(fake, database, events)
    retried = receive(fake, database, events, signed_at=T + 60, now=NOW + timedelta(seconds=61))
    overlapping = receive(
        fake, database, [events[0], events[0], *fake.webhook_events_for(KEYS[:1], "open", timestamp=T)]
    )

    assert (first, retried, overlapping) == (ReceiveResult(4, 0), ReceiveResult(0, 4), ReceiveResult(1, 2))
    assert count(database, ProviderEvent) == 5
    assert count(database, DeliveryFact) == 5
    assert {row["received_at"] for row in rows(database, ProviderEvent)} == {NOW}  # the first arrival stays


@pytest.mark.usefixtures("sent")
@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"[{]", "not JSON"),
        (b'{"event": "open"}', "expected an array"),
        (b'["open"]', "event 0 is a JSON str"),
        (b'[{"event": "open", "email": "u0@example.com", "timestamp": 1}]', "event 0: sg_event_id"),
        (b'[{"sg_event_id": "e", "event": "open", "email": "a@b.c", "timestamp": "soon"}]', "event 0: timestamp"),
    ],
)
def test_an_authentic_but_malformed_batch_is_refused_whole(
    fake: FakeSendGrid, database: Engine, body: bytes, problem: str
) -> None:
    headers = fake.webhook_headers(body, timestamp=T)

    with pytest.raises(MalformedBatch, match=problem):
        receive_sendgrid(body, headers, now=NOW, public_key=fake.webhook_public_key(), database=database)

    assert count(database, ProviderEvent) == 0


@pytest.mark.usefixtures("sent")
@pytest.mark.parametrize(
    ("event", "fields", "reason"),
    [
        ("bounce", {}, "bounce"),
        ("dropped", {}, "dropped"),
        ("unsubscribe", {}, "unsubscribe"),
        ("group_unsubscribe", {}, "group_unsubscribe"),
        ("spamreport", {}, "spamreport"),
        ("delivered", {}, None),
        ("open", {}, None),
        ("click", {}, None),
        ("processed", {}, None),
        ("deferred", {}, None),
        ("bounce", {"type": "blocked"}, None),  # a block is SendGrid being refused for now, not a dead address
        ("dropped", {"reason": "Invalid SMTPAPI header"}, None),  # about the message, not the address
    ],
)
def test_bounces_drops_unsubscribes_and_spam_reports_suppress_the_address(
    fake: FakeSendGrid, database: Engine, event: str, fields: dict[str, str], reason: str | None
) -> None:
    [sent_event] = fake.webhook_events_for(KEYS[:1], event, timestamp=T - 30, **fields)

    receive(fake, database, [sent_event])

    with database.connect() as conn:
        found = suppressed(conn, "email", ["U0@Example.com", "u1@example.com"])
        on_push = suppressed(conn, "push", ["u0@example.com"])
    assert found == ({"U0@Example.com"} if reason else set())
    assert on_push == set()
    expected = [
        {
            "channel": "email",
            "address": "u0@example.com",
            "reason": reason,
            "source": "sendgrid",
            "event_id": sent_event["sg_event_id"],
            "since": NOW - timedelta(seconds=30),
        }
    ]
    assert rows(database, Suppression) == (expected if reason else [])


@pytest.mark.usefixtures("sent")
def test_an_address_keeps_the_reason_it_was_first_suppressed_for(fake: FakeSendGrid, database: Engine) -> None:
    receive(fake, database, fake.webhook_events_for(KEYS[:1], "spamreport", timestamp=T - 10))
    receive(fake, database, fake.webhook_events_for(KEYS[:1], "bounce", timestamp=T - 100))
    receive(fake, database, fake.webhook_events_for([STRANGER], "bounce", timestamp=T))

    with database.connect() as conn:
        found = suppressed(conn, "email", ["u0@example.com", "someone@example.com", "u2@example.com"])
    assert found == {"u0@example.com", "someone@example.com"}  # another system's bounce is still a dead address
    assert {row["address"]: row["reason"] for row in rows(database, Suppression)} == {
        "u0@example.com": "spamreport",
        "someone@example.com": "bounce",
    }


@pytest.mark.usefixtures("sent")
def test_engagement_becomes_delivery_facts_of_the_outbox_rows_user(fake: FakeSendGrid, database: Engine) -> None:
    events = [
        *fake.webhook_events_for(KEYS, "processed", timestamp=T - 50),
        *fake.webhook_events_for(KEYS[:2], "delivered", timestamp=T - 40),
        *fake.webhook_events_for(KEYS[:1], "open", timestamp=T - 30),
        *fake.webhook_events_for(KEYS[:1], "open", timestamp=T - 20),
        *fake.webhook_events_for(KEYS[1:2], "click", timestamp=T - 10),
        *fake.webhook_events_for(KEYS[2:], "bounce", timestamp=T - 5),
        *fake.webhook_events_for([STRANGER], "delivered", timestamp=T),
    ]

    assert receive(fake, database, events).stored == len(events)

    facts = sorted((r["user_id"], r["kind"], r["ts"], r["send_key"]) for r in rows(database, DeliveryFact))
    assert facts == [
        ("u0", "opened", NOW - timedelta(seconds=30), KEYS[0]),
        ("u0", "opened", NOW - timedelta(seconds=20), KEYS[0]),
        ("u0", "received", NOW - timedelta(seconds=40), KEYS[0]),
        ("u1", "clicked", NOW - timedelta(seconds=10), KEYS[1]),
        ("u1", "received", NOW - timedelta(seconds=40), KEYS[1]),
        ("u2", "bounced", NOW - timedelta(seconds=5), KEYS[2]),
    ]


@pytest.mark.usefixtures("sent")
def test_feedback_comes_out_as_rows_of_our_events_contract(fake: FakeSendGrid, database: Engine) -> None:
    receive(
        fake,
        database,
        [
            *fake.webhook_events_for(KEYS, "processed", timestamp=T - 50),
            *fake.webhook_events_for(KEYS[:2], "delivered", timestamp=T - 40),
            *fake.webhook_events_for(KEYS[:1], "open", timestamp=T - 30),
            *fake.webhook_events_for(KEYS[1:2], "click", timestamp=T - 10, url="https://shop.example/cart?id=7"),
            *fake.webhook_events_for(KEYS[2:], "bounce", timestamp=T - 5),
            *fake.webhook_events_for(KEYS[1:2], "unsubscribe", timestamp=T - 4),
            *fake.webhook_events_for(KEYS[:1], "spamreport", timestamp=T - 3),
            *fake.webhook_events_for([STRANGER], "open", timestamp=T),
        ],
    )

    with database.connect() as conn:
        frame = feedback_events(conn, since=NOW - timedelta(hours=1), until=NOW + timedelta(seconds=1))
        later = feedback_events(conn, since=NOW + timedelta(seconds=1), until=NOW + timedelta(hours=1))

    def props(key: str, **extra: str) -> str:
        values = {"journey": "abandoned_cart", "send_key": key, "template": "cart_reminder", **extra}
        return json.dumps(values, separators=(",", ":"), sort_keys=True)

    expected = pl.DataFrame(
        [
            ("u0", "email_delivered", -40, props(KEYS[0])),
            ("u1", "email_delivered", -40, props(KEYS[1])),
            ("u0", "email_open", -30, props(KEYS[0])),
            ("u1", "email_click", -10, props(KEYS[1], url="https://shop.example/cart?id=7")),
            ("u2", "email_bounce", -5, props(KEYS[2])),
            ("u1", "email_unsubscribe", -4, props(KEYS[1])),
            ("u0", "email_spamreport", -3, props(KEYS[0])),
        ],
        schema=["user_id", "event", "ts", "properties"],
        orient="row",
    ).select(
        "user_id",
        "event",
        (pl.lit(NOW) + pl.duration(seconds=pl.col("ts"))).dt.cast_time_unit("us").alias("ts"),
        pl.lit(None, pl.Float64).alias("value"),
        "properties",
    )
    assert_frame_equal(frame, expected)
    assert later.is_empty() and later.schema == frame.schema


@pytest.mark.usefixtures("sent")
def test_the_feedback_partition_has_stable_bytes_and_loads_through_ingest(
    fake: FakeSendGrid, database: Engine, tmp_path: Path
) -> None:
    snapshot, store = tmp_path / "snapshot", tmp_path / "store"
    events = fake.webhook_events_for(KEYS, "delivered", timestamp=T - 40) + fake.webhook_events_for(
        KEYS[:1], "click", timestamp=T - 10
    )
    receive(fake, database, events)

    with database.connect() as conn:
        path = write_feedback_partition(conn, snapshot, day=NOW.date())
        first = path.read_bytes()
        receive(fake, database, events)  # a replay changes nothing
        again = write_feedback_partition(conn, snapshot, day=NOW.date()).read_bytes()

    assert path == snapshot / "events" / "date=2026-10-02" / FEEDBACK_FILE
    assert first == again
    report = ingest_events(snapshot, store_dir=store, through=NOW.date())
    [file] = report.files
    assert (file.rows_loaded, file.quarantined) == (4, {})
    seen = scan_events(store, as_of=NOW).collect()
    assert sorted(seen["event"]) == ["email_click", "email_delivered", "email_delivered", "email_delivered"]
    assert seen.filter(pl.col("event") == "email_click")["user_id"].to_list() == ["u0"]


def test_the_public_key_setting_refuses_empty_placeholder_and_wrong_keys(
    fake: FakeSendGrid, monkeypatch: pytest.MonkeyPatch
) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    rsa_der = rsa_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    monkeypatch.setenv("NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY", f" {fake.webhook_public_key()}\n")

    assert WebhookSettings().public_key == fake.webhook_public_key()  # type: ignore[call-arg]
    for bad, problem in [
        ("", "is empty"),
        ("changeme", "placeholder"),
        ("MFkw-not-a-key", "not a base64 DER public key"),
        (base64.b64encode(rsa_der).decode(), "not an ECDSA P-256 key"),
    ]:
        monkeypatch.setenv("NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY", bad)
        with pytest.raises(ValidationError, match=problem):
            WebhookSettings()  # type: ignore[call-arg]
    monkeypatch.delenv("NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY")
    with pytest.raises(ValidationError, match="public_key"):
        WebhookSettings()  # type: ignore[call-arg]


def _without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {key: value for key, value in headers.items() if key != name}
