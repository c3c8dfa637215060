"""The shipped delivery policy in real runs: skips and holds never reach a provider, holds go out later."""

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta

import polars as pl
import pytest
from sqlalchemy import select

from engine.db import connect
from engine.definitions import load_definitions
from engine.delivery_controls import in_control_group
from engine.fakes import FakeProviders
from engine.render import TemplateStore
from engine.sample.generate import generate
from engine.settings import REPO_ROOT
from models.tables import OutboxMessage

START = date(2026, 9, 1)
RUNS = [datetime.combine(START + timedelta(days=20 + i), time(6), UTC) for i in range(3)]


@pytest.fixture(scope="module")
def runs(prefect_harness, tmp_path_factory) -> Iterator[tuple[list[dict], FakeProviders]]:
    from flows.daily import daily_campaign

    home = tmp_path_factory.mktemp("controls")
    generate(home / "snapshot", users=800, days=23, start=START, seed=3)
    with FakeProviders(home / "fakes") as fakes, pytest.MonkeyPatch.context() as patch:
        env = {**fakes.env(), "NUDGE_HOME": str(home), "NUDGE_SNAPSHOT_DIR": str(home / "snapshot")}
        for name, value in env.items():
            patch.setenv(name, value)
        for as_of in RUNS:
            daily_campaign(as_of=as_of)
        table = OutboxMessage.__table__
        with connect(f"sqlite:///{home / 'nudge.db'}").connect() as conn:
            rows = [dict(row) for row in conn.execute(select(table)).mappings().all()]
        yield rows, fakes


def test_the_control_group_is_never_messaged_and_nobody_else_is_held_out(runs):
    rows, _ = runs
    policy = load_definitions(REPO_ROOT / "definitions", TemplateStore(REPO_ROOT / "templates")).delivery
    assert policy.control_group is not None
    users = pl.Series(sorted({row["user_id"] for row in rows}))
    held_out = set(users.filter(in_control_group(users, policy.control_group)).to_list())
    for row in rows:
        if row["user_id"] in held_out:
            assert row["status"] == "skipped", row  # as control_group, or for a reason found before it
        else:
            assert row["reason"] != "control_group", row


def test_quiet_hours_hold_messages_for_users_whose_night_it_is(runs):
    rows, _ = runs
    reasons = Counter(row["reason"] for row in rows if row["status"] == "skipped")
    assert any(row["not_before"] is not None for row in rows), ("nobody held at 06:00 UTC", reasons)


def test_nothing_skipped_reaches_a_provider_and_held_messages_wait_for_their_time(runs):
    rows, fakes = runs
    sent = {p["custom_args"]["send_key"] for r in fakes.sendgrid.received("/v3/") for p in r.body["personalizations"]}
    sent |= {r.body["message"]["data"]["send_key"] for r in fakes.fcm.received("/v1/") if r.status == 200}
    skipped = {row["send_key"] for row in rows if row["status"] == "skipped"}
    assert sent and not sent & skipped
    for row in rows:
        if row["status"] == "accepted" and row["not_before"] is not None:
            assert row["not_before"] > row["as_of"], "a hold is later than its planning"
    last = RUNS[-1]
    waiting = [row for row in rows if row["status"] == "planned"]
    assert all(row["not_before"] is not None and row["not_before"] > last for row in waiting), (
        "whatever is still planned after the last run is held past it"
    )
    released = [row for row in rows if row["not_before"] is not None and row["not_before"] <= last]
    assert released and all(row["status"] != "planned" for row in released)
