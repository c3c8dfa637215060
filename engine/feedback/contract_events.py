"""Provider feedback as behavioural events of our own input contract, so segments see it like any event.

Rows are chosen by when we received them, not when they happened: a snapshot partition is the UTC day its
events arrived (docs/input-contract.md), so a day's file only grows while that day lasts and a past as_of
replays the same rows. `ts` is still the moment SendGrid says the event happened.
"""

import json
import os
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from sqlalchemy import Table, select
from sqlalchemy.engine import Connection

from engine.contract import EVENTS_DIR, UTC_TIMESTAMP, partition_name
from engine.feedback.meanings import MEANINGS
from engine.feedback.provider_events import PROVIDER_EVENT
from models.tables import OutboxMessage

FEEDBACK_FILE = "sendgrid-feedback.parquet"
FEEDBACK_SCHEMA = pl.Schema(
    [
        ("user_id", pl.String()),
        ("event", pl.String()),
        ("ts", UTC_TIMESTAMP),
        ("value", pl.Float64()),
        ("properties", pl.String()),
    ]
)
"""The raw columns of the events contract; ingest derives `load_date` from the partition."""

OUTBOX: Table = OutboxMessage.__table__  # type: ignore[attr-defined]
_NAMES = {event: meaning.behaviour_event for event, meaning in MEANINGS.items() if meaning.behaviour_event}


def feedback_events(conn: Connection, *, since: datetime, until: datetime) -> pl.DataFrame:
    """Contract rows for the stored events received in [since, until) that lead to an outbox row.

    Each row is one provider event: `user_id` is the outbox row's user, `event` one of `email_delivered`,
    `email_open`, `email_click`, `email_bounce`, `email_unsubscribe`, `email_spamreport`, and `properties`
    holds `send_key`, `journey`, `template` and, for clicks, `url`. Sorted by ts, user, event, then SendGrid's
    event id, so the same stored events always give the same frame.
    """
    query = (
        select(
            PROVIDER_EVENT.c.sg_event_id,
            PROVIDER_EVENT.c.event,
            PROVIDER_EVENT.c.timestamp,
            PROVIDER_EVENT.c.send_key,
            PROVIDER_EVENT.c.raw,
            OUTBOX.c.user_id,
            OUTBOX.c.journey,
            OUTBOX.c.template,
        )
        .join(OUTBOX, OUTBOX.c.send_key == PROVIDER_EVENT.c.send_key)
        .where(
            PROVIDER_EVENT.c.received_at >= since,
            PROVIDER_EVENT.c.received_at < until,
            PROVIDER_EVENT.c.event.in_(sorted(_NAMES)),
        )
    )
    rows = [
        {
            "user_id": row.user_id,
            "event": _NAMES[row.event],
            "ts": row.timestamp,
            "value": None,
            "properties": _properties(row.send_key, row.journey, row.template, _url(row.event, row.raw)),
            "sg_event_id": row.sg_event_id,
        }
        for row in conn.execute(query)
    ]
    frame = pl.DataFrame(rows, schema={**FEEDBACK_SCHEMA, "sg_event_id": pl.String()}, orient="row")
    return frame.sort("ts", "user_id", "event", "sg_event_id").drop("sg_event_id")


def write_feedback_partition(conn: Connection, snapshot_dir: Path, *, day: date) -> Path:
    """Write the events received on `day` (UTC) to `events/date=DAY/sendgrid-feedback.parquet`; returns the path.

    The same stored events give the same bytes, so ingest's manifest skips an unchanged file; a day with no
    feedback still gets its (empty) file, which says the export ran. Written under a hidden name and renamed,
    so ingest never reads half a file.
    """
    since = datetime.combine(day, time(), tzinfo=UTC)
    frame = feedback_events(conn, since=since, until=since + timedelta(days=1))
    path = snapshot_dir / EVENTS_DIR / partition_name(day) / FEEDBACK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.write_parquet(tmp)
    os.replace(tmp, path)
    return path


def _url(event: str, raw: str) -> str | None:
    if event != "click":
        return None
    url: Any = json.loads(raw).get("url")
    return url if isinstance(url, str) else None


def _properties(send_key: str, journey: str, template: str, url: str | None) -> str:
    """Compact JSON, keys sorted, nulls dropped: the canonical form ingest would give it anyway."""
    values = {"journey": journey, "send_key": send_key, "template": template, "url": url}
    present = {k: v for k, v in sorted(values.items()) if v is not None}
    return json.dumps(present, separators=(",", ":"))
