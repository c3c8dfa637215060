"""The dispatch-only flow: a message held for quiet hours goes out once its hold has passed, once, and nothing else
happens (no segment, journey or run-history work).

Two daily runs with the shipped delivery policy (quiet hours 21:00-08:00 local, hold) plan reminders at 06:00 UTC,
when much of the sample population is still in its night: those are held with a `not_before`.
"""

import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from engine.db import connect
from engine.fakes import FakeProviders
from engine.sample.generate import generate
from engine.settings import REPO_ROOT
from models.tables import JourneyInstance, JourneyTransition, OutboxMessage, Run, SegmentSize

START = date(2026, 9, 1)
RUN_TIMES = [datetime.combine(START + timedelta(days=n), time(6), UTC) for n in (8, 9)]
_OUTBOX = OutboxMessage.__table__
_ENGINE_TABLES = [t.__table__ for t in (JourneyInstance, JourneyTransition, Run, SegmentSize)]


@pytest.fixture(scope="module")
def world(prefect_harness, tmp_path_factory) -> Iterator[tuple[Path, FakeProviders, str]]:
    from flows.daily import daily_campaign

    home = tmp_path_factory.mktemp("dispatch")
    generate(home / "snapshot", users=500, days=14, start=START, seed=5)
    shutil.copytree(REPO_ROOT / "definitions", home / "definitions")
    url = f"sqlite:///{home / 'nudge.db'}"
    with FakeProviders(home / "fakes") as fakes, pytest.MonkeyPatch.context() as patch:
        env = {
            **fakes.env(),
            "NUDGE_HOME": str(home),
            "NUDGE_SNAPSHOT_DIR": str(home / "snapshot"),
            "NUDGE_DEFINITIONS_DIR": str(home / "definitions"),
            "NUDGE_DATABASE_URL": url,
        }
        for name, value in env.items():
            patch.setenv(name, value)
        for as_of in RUN_TIMES:
            daily_campaign(as_of=as_of)
        yield home, fakes, url


def test_a_held_message_is_sent_once_its_hold_has_passed(world):
    from flows.dispatch import dispatch_due

    _, fakes, url = world
    held = {row["send_key"]: row["not_before"] for row in _rows(url, _OUTBOX) if row["status"] == "planned"}
    assert len(held) >= 3 and all(held.values()), "only held messages are left planned after the daily runs"
    first = min(held.values())
    engine_state = [_rows(url, table) for table in _ENGINE_TABLES]

    dispatch_due(as_of=first - timedelta(seconds=1))
    assert _sent_keys(fakes) & set(held) == set()

    dispatch_due(as_of=first)
    due_first = {key for key, not_before in held.items() if not_before <= first}
    assert _sent_keys(fakes) & set(held) == due_first

    last = max(held.values())
    dispatch_due(as_of=last)
    sent = _sent_keys(fakes)
    assert sent >= set(held)
    statuses = {row["send_key"]: row["status"] for row in _rows(url, _OUTBOX)}
    assert {statuses[key] for key in held} == {"accepted"}

    dispatch_due(as_of=last + timedelta(hours=1))
    assert len(_sent_list(fakes)) == len(set(_sent_list(fakes))), "no message is sent twice"
    assert [_rows(url, table) for table in _ENGINE_TABLES] == engine_state, "dispatch plans nothing"


def _rows(url: str, table) -> list[dict]:
    key = list(table.primary_key.columns)
    with connect(url).connect() as conn:
        return [dict(row) for row in conn.execute(select(table).order_by(*key)).mappings().all()]


def _sent_list(fakes: FakeProviders) -> list[str]:
    """The send key of every message sent, repeats included: each personalization of a SendGrid request is one."""
    emails = [
        p["custom_args"]["send_key"]
        for r in fakes.sendgrid.received("/v3/mail/send")
        for p in r.body["personalizations"]
    ]
    pushes = [r.body["message"]["data"]["send_key"] for r in fakes.fcm.received("/v1/")]
    return emails + pushes


def _sent_keys(fakes: FakeProviders) -> set[str]:
    return set(_sent_list(fakes))
