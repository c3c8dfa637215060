"""Keeping every webhook event once, by SendGrid's `sg_event_id`, whatever SendGrid retries."""

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Table
from sqlalchemy.engine import Connection

from engine.db import insert_new
from engine.feedback.payload import WebhookEvent
from models.feedback import ProviderEvent

PROVIDER_EVENT: Table = ProviderEvent.__table__  # type: ignore[attr-defined]


def store_provider_events(conn: Connection, events: Sequence[WebhookEvent], *, received_at: datetime) -> int:
    """Insert the events not stored yet; returns how many were new.

    Args:
        conn: a connection inside the transaction that also records the events' facts and suppressions.
        events: one verified batch.
        received_at: when the batch arrived; a retried batch keeps its first arrival.
    """
    rows = [
        {
            "sg_event_id": event.sg_event_id,
            "event": event.event,
            "email": event.email,
            "timestamp": event.at,
            "send_key": event.send_key,
            "run_id": event.run_id,
            "category": json.dumps(event.categories),
            "raw": event.raw,
            "received_at": received_at,
        }
        for event in events
    ]
    return insert_new(conn, PROVIDER_EVENT, rows) if rows else 0
