"""A bounce reported by SendGrid's signed webhook keeps the next plan from mailing that address again."""

from datetime import UTC, datetime

import polars as pl

from engine.feedback.receive import receive_sendgrid
from engine.feedback.suppressions import suppressed
from engine.journeys import SEND_SCHEMA
from engine.outbox import plan_outbox, skip_suppressed
from tests.test_dispatch import AS_OF, database, dispatch, fakes, senders  # noqa: F401  (fixtures)


def test_a_bounced_address_is_skipped_as_suppressed_at_the_next_plan(database, senders, fakes):  # noqa: F811
    dispatch(database, senders, "run-1")
    now = int(datetime(2026, 10, 1, 7, tzinfo=UTC).timestamp())
    events = fakes.sendgrid.webhook_events_for(["key-2"], "bounce", timestamp=now)
    body, headers = fakes.sendgrid.signed_webhook_batch(events, timestamp=now)
    receive_sendgrid(
        body,
        headers,
        now=datetime.fromtimestamp(now, UTC),
        public_key=fakes.sendgrid.webhook_public_key(),
        database=database,
    )

    users = pl.LazyFrame(
        {
            "user_id": ["u1", "u2"],
            "email": ["u1@example.com", "U2@Example.com"],
            "email_consent": [True, True],
            "push_tokens": [[], []],
            "push_consent": [True, True],
        }
    )
    sends = pl.DataFrame(
        {
            "send_key": ["next-1", "next-2"],
            "instance_id": ["i1", "i2"],
            "journey": "abandoned_cart",
            "version": "v",
            "user_id": ["u1", "u2"],
            "node": "email_reminder",
            "channel": "email",
            "template": "cart_reminder",
            "variant": None,
            "transactional": False,
            "priority": 0,
        },
        schema=SEND_SCHEMA,
    )
    outbox = plan_outbox(sends, users, run_id="run-2", as_of=AS_OF)
    with database.connect() as conn:
        hit = suppressed(conn, "email", outbox.get_column("recipient").to_list())
    planned = skip_suppressed(outbox, "email", hit)

    assert planned.select("user_id", "status", "reason").rows() == [
        ("u1", "planned", None),
        ("u2", "skipped", "suppressed"),
    ]
