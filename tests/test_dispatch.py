"""Dispatch from the outbox to the fake providers: outcomes recorded, retries bounded, nothing sent twice."""

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import Engine, select

from engine.behaviour import Behaviour
from engine.db import connect, insert_new
from engine.dispatch import DispatchPolicy, dispatch_channel, in_doubt
from engine.fakes import FakeProviders
from engine.providers.factory import Senders, build_senders
from engine.providers.settings import FcmSettings, SendGridSettings
from engine.render import TemplateStore
from engine.rollups import ROLLUP_SCHEMA
from engine.settings import REPO_ROOT
from models.tables import OutboxMessage

AS_OF = datetime(2026, 10, 1, 6, tzinfo=UTC)
OUTBOX = OutboxMessage.__table__
USERS = pl.LazyFrame({"user_id": [f"u{i}" for i in range(6)], "first_name": ["Ada"] * 6})
EVENTS = pl.LazyFrame(
    {
        "user_id": [f"u{i}" for i in range(6)],
        "event": ["add_to_cart"] * 6,
        "ts": [datetime(2026, 9, 30, 12, tzinfo=UTC)] * 6,
        "value": [None] * 6,
        "properties": ['{"cart_id":"c1","item_id":"sku-1","price":9.5}'] * 6,
    },
    schema_overrides={"ts": pl.Datetime("us", "UTC"), "value": pl.Float64},
)
BEHAVIOUR = Behaviour(AS_OF, EVENTS, pl.LazyFrame(schema=ROLLUP_SCHEMA))


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def fakes(tmp_path: Path) -> Iterator[FakeProviders]:
    with FakeProviders(tmp_path / "fakes", record=False) as providers:
        yield providers


@pytest.fixture
def senders(fakes: FakeProviders) -> Iterator[Senders]:
    env = fakes.env()
    sendgrid = SendGridSettings(api_key=env["NUDGE_SENDGRID_API_KEY"], host=env["NUDGE_SENDGRID_HOST"], timeout=2.0)
    fcm = FcmSettings(
        service_account_file=Path(env["NUDGE_FCM_SERVICE_ACCOUNT_FILE"]), endpoint=env["NUDGE_FCM_ENDPOINT"]
    )
    with build_senders(sendgrid, fcm) as built:
        yield built


@pytest.fixture
def database(tmp_path: Path) -> Engine:
    engine = connect(f"sqlite:///{tmp_path / 'outbox.db'}")
    rows = [
        {
            "send_key": f"key-{i}",
            "run_id": "planner",
            "as_of": AS_OF,
            "journey": "abandoned_cart",
            "journey_version": "v",
            "node": "email_reminder",
            "instance_id": f"i{i}",
            "user_id": f"u{i}",
            "channel": "email",
            "template": "cart_reminder",
            "recipient": f"u{i}@example.com",
            "status": "planned",
        }
        for i in range(6)
    ]
    with engine.begin() as conn:
        insert_new(conn, OUTBOX, rows)
    return engine


def dispatch(database: Engine, senders: Senders, run_id: str, sleeps: Sleeps | None = None):
    return dispatch_channel(
        database,
        channel="email",
        run_id=run_id,
        behaviour=BEHAVIOUR,
        users=USERS,
        templates=TemplateStore(REPO_ROOT / "templates"),
        sender=senders.email,
        policy=DispatchPolicy(batch_size=4, sleep=Sleeps() if sleeps is None else sleeps),
    )


def ledger(database: Engine) -> dict[str, tuple[str, int, str | None]]:
    with database.connect() as conn:
        rows = conn.execute(select(OUTBOX.c.send_key, OUTBOX.c.status, OUTBOX.c.attempts, OUTBOX.c.error_code))
        return {key: (status, attempts, code) for key, status, attempts, code in rows}


def test_every_planned_message_is_sent_once_and_recorded(database, senders, fakes):
    counts = dispatch(database, senders, "run-1")
    assert counts.as_dict() == {"claimed": 6, "accepted": 6}
    assert {status for status, _, _ in ledger(database).values()} == {"accepted"}
    bodies = [r.body for r in fakes.sendgrid.received("/v3/mail/send")]
    assert sorted(b["personalizations"][0]["custom_args"]["send_key"] for b in bodies) == [f"key-{i}" for i in range(6)]
    assert "sku-1" in bodies[0]["content"][1]["value"] or "sku-1" in bodies[0]["content"][0]["value"]

    assert dispatch(database, senders, "run-2").as_dict() == {"claimed": 0}
    assert len(fakes.sendgrid.received("/v3/mail/send")) == 6


def test_a_rate_limit_is_waited_out_and_the_message_retried(database, senders, fakes):
    fakes.sendgrid.fail_next(429, count=1, reset_in=2.0)
    sleeps = Sleeps()
    counts = dispatch(database, senders, "run-1", sleeps)
    assert counts.outcomes["accepted"] == 6 and counts.claimed == 7
    assert len(sleeps) == 1 and 0.5 <= sleeps[0] <= 3.0, sleeps
    assert sorted(attempts for _, attempts, _ in ledger(database).values()) == [1, 1, 1, 1, 1, 2]


def test_a_rejected_message_fails_at_once_and_is_not_retried(database, senders, fakes):
    fakes.sendgrid.fail_next(400, count=1)
    dispatch(database, senders, "run-1")
    failed = [(attempts, code) for status, attempts, code in ledger(database).values() if status == "failed"]
    assert failed == [(1, "sendgrid_400")]
    assert len(fakes.sendgrid.received("/v3/mail/send")) == 6


def test_retries_stop_at_the_attempt_budget(database, senders, fakes):
    fakes.sendgrid.fail_next(503, count=100)
    dispatch(database, senders, "run-1")
    assert {(status, attempts) for status, attempts, _ in ledger(database).values()} == {("failed", 3)}
    assert len(fakes.sendgrid.received("/v3/mail/send")) == 18


def test_two_concurrent_dispatchers_send_each_message_once(database, senders, fakes):
    runs = [threading.Thread(target=dispatch, args=(database, senders, f"run-{i}")) for i in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    keys = [r.body["personalizations"][0]["custom_args"]["send_key"] for r in fakes.sendgrid.received("/v3/")]
    assert sorted(keys) == [f"key-{i}" for i in range(6)]


def test_a_claim_left_by_a_crashed_run_is_in_doubt_and_never_resent(database, senders, fakes):
    with database.begin() as conn:
        conn.execute(
            OUTBOX.update().where(OUTBOX.c.send_key == "key-0").values(status="claimed", dispatched_run_id="gone")
        )
    dispatch(database, senders, "run-1")
    assert in_doubt(database, run_id="run-1") == 1
    assert ledger(database)["key-0"][0] == "claimed"
    assert len(fakes.sendgrid.received("/v3/mail/send")) == 5
