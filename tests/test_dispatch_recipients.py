"""What a provider's verdict on a recipient or on our setup does: dead tokens buried, a bad setup stops a channel."""

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import Engine, select

from engine.db import insert_new
from engine.dispatch import ConfigurationAlert, DispatchCounts, raise_for_configuration
from engine.dispatch_policy import DispatchPolicy
from engine.fakes import FakeFcm, FakeSendGrid
from engine.feedback.suppressions import suppressed
from engine.outbox import skip_suppressed
from engine.providers.fcm_push import FcmPushSender
from engine.providers.sendgrid_email import SendGridEmailSender
from models.feedback import Suppression
from tests.dispatch_world import (
    OUTBOX,
    RecordingClock,
    dispatch,
    ledger,
    outbox_database,
    planned_rows,
    push_sender,
    sent_keys,
    summary_of,
)

DEAD = "token-dead"


@pytest.fixture
def fcm() -> Iterator[FakeFcm]:
    with FakeFcm() as fake:
        yield fake


@pytest.fixture
def sender(fcm: FakeFcm, tmp_path: Path) -> Iterator[FcmPushSender]:
    built = push_sender(fcm, tmp_path)
    yield built
    built.close()


def policy() -> DispatchPolicy:
    return DispatchPolicy(clock=RecordingClock(), wave_size=2)


def rows_to_dead_token(database: Engine) -> dict[str, tuple[str, str | None, str | None]]:
    return {
        key: (row["status"], row["reason"], row["error_code"])
        for key, row in ledger(database).items()
        if row["recipient"] == DEAD
    }


def test_an_unregistered_token_is_buried_and_its_other_messages_skipped_in_the_same_run(tmp_path, sender, fcm):
    rows = planned_rows("push", 6, recipients={0: DEAD, 3: DEAD, 5: DEAD})
    database = outbox_database(f"sqlite:///{tmp_path / 'o.db'}", rows)
    fcm.unregister(DEAD)
    counts = dispatch(database, "push", sender, policy())
    assert rows_to_dead_token(database) == {
        "key-0": ("failed", None, "UNREGISTERED"),
        "key-3": ("skipped", "unregistered", None),
        "key-5": ("skipped", "unregistered", None),
    }
    assert counts.outcomes == {"accepted": 3, "failed": 1, "skipped": 2}
    assert sorted(sent_keys(fcm)) == ["key-1", "key-2", "key-4"]
    assert len(fcm.received("/v1/")) == 4  # the dead token was asked once
    with database.connect() as conn:
        dead = conn.execute(select(Suppression.__table__)).mappings().one()
    assert (dead["channel"], dead["address"], dead["reason"], dead["source"]) == ("push", DEAD, "unregistered", "fcm")


def test_a_buried_token_is_never_sent_to_again(tmp_path, sender, fcm):
    database = outbox_database(f"sqlite:///{tmp_path / 'o.db'}", planned_rows("push", 2, recipients={0: DEAD}))
    fcm.unregister(DEAD)
    dispatch(database, "push", sender, policy())
    later = planned_rows("push", 3, recipients={2: DEAD})[2] | {"send_key": "later-to-dead", "run_id": "next"}
    with database.begin() as conn:
        insert_new(conn, OUTBOX, [later])
    counts = dispatch(database, "push", sender, policy(), run_id="run-2")
    assert counts.as_dict() == {"claimed": 0, "skipped": 1}
    assert rows_to_dead_token(database)["later-to-dead"] == ("skipped", "unregistered", None)
    assert len(fcm.received("/v1/")) == 2

    # Planning asks the same list: the next plan skips the token before it reaches the outbox.
    outbox = pl.DataFrame(
        {"channel": ["push", "push"], "recipient": [DEAD, "token-1"], "status": ["planned"] * 2, "reason": [None] * 2},
        schema_overrides={"reason": pl.String},
    )
    with database.connect() as conn:
        planned = skip_suppressed(outbox, "push", suppressed(conn, "push", [DEAD, "token-1"]), reason="unregistered")
    assert planned.select("status", "reason").rows() == [("skipped", "unregistered"), ("planned", None)]


# google-auth answers a 401 by fetching a new token and trying twice more: THIRD_PARTY_AUTH_ERROR comes 3 times.
@pytest.mark.parametrize(("code", "answers"), [("SENDER_ID_MISMATCH", 1), ("THIRD_PARTY_AUTH_ERROR", 3)])
def test_a_configuration_error_stops_the_channel_and_leaves_every_message_sendable(
    tmp_path, sender, fcm, code, answers
):
    database = outbox_database(f"sqlite:///{tmp_path / 'o.db'}", planned_rows("push", 6))
    fcm.fail_next(code, count=answers)
    counts = dispatch(database, "push", sender, DispatchPolicy(clock=RecordingClock(), wave_size=1))
    assert counts.configuration_alert is not None and counts.configuration_alert.startswith(code)
    assert counts.outcomes == {"configuration_error": 1}
    assert len(fcm.received("/v1/")) == answers  # the first wave, then nothing
    unsent = {
        key: (row["status"], row["attempts"]) for key, row in ledger(database).items() if row["status"] != "accepted"
    }
    assert sorted(unsent.values()) == [("planned", 0)] * 6, unsent
    with pytest.raises(ConfigurationAlert, match=f"push stopped: {code}"):
        raise_for_configuration({"email": DispatchCounts(claimed=3), "push": counts})
    assert f"**push stopped by a configuration error**: {code}" in summary_of({"push": counts}).markdown()

    fixed = dispatch(database, "push", sender, policy(), run_id="run-2")
    assert fixed.outcomes == {"accepted": 6} and fixed.configuration_alert is None
    assert sorted(sent_keys(fcm)) == [f"key-{i}" for i in range(6)]


def test_a_refused_sendgrid_key_is_a_configuration_alert_and_fails_nothing(tmp_path):
    database = outbox_database(f"sqlite:///{tmp_path / 'o.db'}", planned_rows("email", 4))
    with FakeSendGrid(api_key="SG.the-right-key") as fake:
        wrong = SendGridEmailSender("SG.an-old-key", fake.url, "hello@example.com", None, timeout=2.0)
        try:
            counts = dispatch(database, "email", wrong, policy())
        finally:
            wrong.close()
        requests = fake.received("/v3/mail/send")
    # The first wave went as one request and the channel stopped at its 401: no later wave was sent.
    assert [[p["custom_args"]["send_key"] for p in r.body["personalizations"]] for r in requests] == [
        ["key-0", "key-1"]
    ]
    assert [r.status for r in requests] == [401]
    assert counts.configuration_alert is not None and counts.configuration_alert.startswith("sendgrid_401")
    assert {row["status"] for row in ledger(database).values()} == {"planned"}
    assert counts.as_dict()["configuration_error"] == 2


def test_the_alert_names_every_stopped_channel_and_the_way_out():
    alert = ConfigurationAlert({"push": "SENDER_ID_MISMATCH: wrong project", "email": "sendgrid_401: bad key"})
    assert str(alert) == (
        "configuration_alert: email stopped: sendgrid_401: bad key; push stopped: SENDER_ID_MISMATCH: wrong project."
        " Unsent messages stay sendable for the next run."
    )
    raise_for_configuration({"email": DispatchCounts(claimed=3), "push": DispatchCounts()})  # nothing to raise
