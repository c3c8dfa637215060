"""A small outbox world for dispatch tests: users with carts, planned rows, senders aimed at fakes, clocks.

Shared by the dispatch test modules and by `tests/dispatch_child.py`, the process the crash test kills.
"""

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from sqlalchemy import Engine, select
from urllib3.util.retry import Retry

from engine.behaviour import Behaviour
from engine.db import connect, insert_new
from engine.dispatch import DispatchCounts, Pace, dispatch_channel
from engine.dispatch_policy import DispatchPolicy
from engine.fakes import FakeFcm, FakeSendGrid
from engine.pipeline import IngestSummary
from engine.providers.fcm_endpoint import DEFAULT_RETRIES
from engine.providers.fcm_push import FcmPushSender
from engine.providers.messages import EmailSender, PushSender
from engine.providers.sendgrid_email import SendGridEmailSender
from engine.render import TemplateStore
from engine.rollups import ROLLUP_SCHEMA
from engine.settings import REPO_ROOT
from engine.summary import RunSummary
from models.tables import OutboxMessage

AS_OF = datetime(2026, 10, 1, 6, tzinfo=UTC)
OUTBOX = OutboxMessage.__table__
USERS_COUNT = 100
USERS = pl.LazyFrame({"user_id": [f"u{i}" for i in range(USERS_COUNT)], "first_name": ["Ada"] * USERS_COUNT})
EVENTS = pl.LazyFrame(
    {
        "user_id": [f"u{i}" for i in range(USERS_COUNT)],
        "event": ["add_to_cart"] * USERS_COUNT,
        "ts": [datetime(2026, 9, 30, 12, tzinfo=UTC)] * USERS_COUNT,
        "value": [None] * USERS_COUNT,
        "properties": ['{"cart_id":"c1","item_id":"sku-1","price":9.5}'] * USERS_COUNT,
    },
    schema_overrides={"ts": pl.Datetime("us", "UTC"), "value": pl.Float64},
)
BEHAVIOUR = Behaviour(AS_OF, EVENTS, pl.LazyFrame(schema=ROLLUP_SCHEMA))
TEMPLATES = {"email": "cart_reminder", "push": "cart_push"}


def recipient(channel: str, i: int) -> str:
    return f"u{i}@example.com" if channel == "email" else f"token-{i}"


def planned_rows(channel: str, count: int, recipients: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """`count` planned rows key-0.. for users u0.., each to its own recipient unless `recipients` says."""
    return [
        {
            "send_key": f"key-{i}",
            "run_id": "planner",
            "as_of": AS_OF,
            "journey": "abandoned_cart",
            "journey_version": "v",
            "node": f"{channel}_reminder",
            "instance_id": f"i{i}",
            "user_id": f"u{i}",
            "channel": channel,
            "template": TEMPLATES[channel],
            "recipient": (recipients or {}).get(i, recipient(channel, i)),
            "status": "planned",
        }
        for i in range(count)
    ]


def outbox_database(url: str, rows: list[dict[str, Any]]) -> Engine:
    engine = connect(url)
    with engine.begin() as conn:
        insert_new(conn, OUTBOX, rows)
    return engine


def ledger(database: Engine) -> dict[str, dict[str, Any]]:
    """Every outbox row by send key."""
    with database.connect() as conn:
        return {row["send_key"]: dict(row) for row in conn.execute(select(OUTBOX)).mappings()}


def statuses(database: Engine) -> dict[str, str]:
    return {key: row["status"] for key, row in ledger(database).items()}


def email_sender(fake: FakeSendGrid, *, timeout: float = 2.0) -> SendGridEmailSender:
    return SendGridEmailSender(fake.api_key, fake.url, "hello@example.com", None, timeout=timeout)


def push_sender(
    fake: FakeFcm, directory: Path, *, timeout: float = 2.0, retries: Retry = DEFAULT_RETRIES
) -> FcmPushSender:
    account = fake.write_service_account(directory / "fcm-service-account.json")
    return FcmPushSender(account, endpoint=fake.url, timeout=timeout, retries=retries)


def dispatch(
    database: Engine,
    channel: str,
    sender: EmailSender | PushSender,
    policy: DispatchPolicy,
    run_id: str = "run-1",
    pace: Pace | None = None,
) -> DispatchCounts:
    return dispatch_channel(
        database,
        channel=channel,
        run_id=run_id,
        behaviour=BEHAVIOUR,
        users=USERS,
        templates=TemplateStore(REPO_ROOT / "templates"),
        sender=sender,
        policy=policy,
        pace=pace,
    )


def sent_keys(fake: FakeSendGrid | FakeFcm) -> list[str]:
    """The send key of every message the fake accepted, in arrival order, repeats included.

    SendGrid takes many emails in one request: each accepted recipient is one email (`FakeSendGrid.accepted`).
    """
    if isinstance(fake, FakeSendGrid):
        return [mail.custom_args["send_key"] for mail in fake.accepted()]
    return [r.body["message"]["data"]["send_key"] for r in fake.received("/v1/") if r.status == 200]


class RecordingClock:
    """Wall time that remembers every sleep: for tests against a fake whose rate-limit resets are wall time."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        time.sleep(seconds)


@dataclass
class VirtualClock:
    """Wall time plus an offset that sleeping and `advance` move forward at once; share `epoch` with a fake."""

    offset: float = 0.0
    slept: float = 0.0

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def sleep(self, seconds: float) -> None:
        self.offset += seconds
        self.slept += seconds

    def advance(self, seconds: float) -> None:
        self.offset += seconds

    def epoch(self) -> float:
        return self.now().timestamp()


def summary_of(counts: dict[str, DispatchCounts], in_doubt: int = 0) -> RunSummary:
    """A run summary holding only these dispatch counts."""
    ingest = IngestSummary("", 0, 0, 0, 0, {}, 0, 0)
    return RunSummary("run", AS_OF, False, ingest, [], [], counts, in_doubt, [])


def as_json(counts: DispatchCounts) -> str:
    return json.dumps(counts.as_dict())
