"""Journey state in the database: load what a run needs, and write what it did in one transaction.

The instances a run moved, their transitions and the outbox rows their sends planned are written together
(the caller holds one transaction per journey), so a crash leaves either all of a journey's step or none of it,
and the rerun that follows redoes exactly the missing part.
"""

from datetime import datetime, timedelta
from typing import Any

import polars as pl
from sqlalchemy import select
from sqlalchemy.engine import Connection

from engine.db import insert_new, upsert
from engine.journeys import INSTANCE_SCHEMA, KNOWN_SCHEMA, Advance
from models.tables import JourneyInstance, JourneyTransition, OutboxMessage

_INSTANCES = JourneyInstance.__table__  # type: ignore[attr-defined]
_TRANSITIONS = JourneyTransition.__table__  # type: ignore[attr-defined]
_OUTBOX = OutboxMessage.__table__  # type: ignore[attr-defined]


def load_active(conn: Connection, journey: str) -> pl.DataFrame:
    rows = conn.execute(
        select(*(_INSTANCES.c[name] for name in INSTANCE_SCHEMA.names()))
        .where(_INSTANCES.c.journey == journey, _INSTANCES.c.status == "active")
        .order_by(_INSTANCES.c.instance_id)
    ).all()
    return pl.DataFrame([tuple(row) for row in rows], schema=INSTANCE_SCHEMA, orient="row")


def load_known(conn: Connection, journey: str) -> pl.DataFrame:
    """Every instance of the journey, in any status and version: what re-entry and rerun detection look at."""
    rows = conn.execute(
        select(*(_INSTANCES.c[name] for name in KNOWN_SCHEMA.names())).where(_INSTANCES.c.journey == journey)
    ).all()
    return pl.DataFrame([tuple(row) for row in rows], schema=KNOWN_SCHEMA, orient="row")


def load_send_history(conn: Connection, *, as_of: datetime, days: int = 8) -> pl.DataFrame:
    """Marketing messages of earlier runs that count against frequency caps: sent, on their way, or held.

    Eight days cover any local calendar week around as_of. Rows of this very as_of are included: after a rerun of
    a run that failed part-way, the journeys it did write count against the caps of those it did not, and the
    controls themselves ignore the rows of the very messages being planned.
    """
    columns = ("user_id", "channel", "journey", "instance_id", "node", "as_of", "not_before")
    rows = conn.execute(
        select(*(_OUTBOX.c[name] for name in columns)).where(
            _OUTBOX.c.status.in_(("planned", "claimed", "sending", "accepted", "retryable")),
            _OUTBOX.c.transactional.is_(False),
            _OUTBOX.c.as_of <= as_of,
            _OUTBOX.c.as_of >= as_of - timedelta(days=days),
        )
    ).all()
    moment = pl.Datetime("us", "UTC")
    schema = {name: moment if name in ("as_of", "not_before") else pl.String for name in columns}
    frame = pl.DataFrame([tuple(row) for row in rows], schema=schema, orient="row")
    return frame.with_columns(pl.coalesce("not_before", "as_of").alias("sent_at")).drop("not_before")


def save_step(conn: Connection, *, result: Advance, outbox: pl.DataFrame, run_id: str) -> int:
    """Write a journey's moved instances, transitions and outbox rows; returns outbox rows newly added."""
    instances = result.instances.with_columns(pl.lit(run_id).alias("run_id"))
    transitions = result.transitions.with_columns(pl.lit(run_id).alias("run_id"))
    if not instances.is_empty():
        upsert(conn, _INSTANCES, _records(instances))
    if not transitions.is_empty():
        insert_new(conn, _TRANSITIONS, _records(transitions))
    if outbox.is_empty():
        return 0
    return insert_new(conn, _OUTBOX, _records(outbox.select(c for c in outbox.columns if c in _OUTBOX.c)))


def _records(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return frame.to_dicts()
