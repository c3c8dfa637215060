"""Message engagement facts: provider events tied to our sends and so to users, for segments to count.

The outbox row found by the event's `send_key` (SendGrid echoes our custom_args) says which user a message
went to; an event whose key we do not know (mail sent by another system on the same account) is kept as a
provider event but is no fact about any of our users.
"""

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.engine import Connection

from engine.db import insert_new
from engine.feedback.meanings import meaning_of
from engine.feedback.payload import WebhookEvent
from models.feedback import DeliveryFact
from models.tables import OutboxMessage

DELIVERY_FACT: Table = DeliveryFact.__table__  # type: ignore[attr-defined]
OUTBOX: Table = OutboxMessage.__table__  # type: ignore[attr-defined]
_CHUNK = 5_000


def record_facts(conn: Connection, events: Sequence[WebhookEvent]) -> int:
    """Insert a fact for each event that has a kind and leads to an outbox row; returns how many were new."""
    keyed = [(event, event.send_key) for event in events if meaning_of(event.event).fact]
    users = outbox_users(conn, {key for _, key in keyed if key})
    rows: list[dict[str, Any]] = [
        {
            "sg_event_id": event.sg_event_id,
            "send_key": key,
            "user_id": users[key],
            "kind": meaning_of(event.event).fact,
            "ts": event.at,
        }
        for event, key in keyed
        if key is not None and key in users
    ]
    return insert_new(conn, DELIVERY_FACT, rows) if rows else 0


def outbox_users(conn: Connection, send_keys: Iterable[str]) -> dict[str, str]:
    """send_key -> user_id for the keys that are in the outbox."""
    keys = sorted(set(send_keys))
    found: dict[str, str] = {}
    for start in range(0, len(keys), _CHUNK):
        query = select(OUTBOX.c.send_key, OUTBOX.c.user_id).where(OUTBOX.c.send_key.in_(keys[start : start + _CHUNK]))
        found.update({key: user for key, user in conn.execute(query)})
    return found
