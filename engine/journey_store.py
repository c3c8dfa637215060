"""Journey state in the database: load what a run needs, and write what it did in one transaction.

The instances a run moved, their transitions and the outbox rows their sends planned are written together
(the caller holds one transaction per journey), so a crash leaves either all of a journey's step or none of it,
and the rerun that follows redoes exactly the missing part.
"""

from collections.abc import Mapping
from datetime import datetime, timedelta

import polars as pl
from sqlalchemy import Table, select
from sqlalchemy.engine import Connection

from engine.db import insert_new_frame, read_frame, upsert_frame
from engine.journeys import INSTANCE_SCHEMA, KNOWN_SCHEMA, Advance
from models.tables import JourneyInstance, JourneyTransition, OutboxMessage

_INSTANCES = JourneyInstance.__table__  # type: ignore[attr-defined]
_TRANSITIONS = JourneyTransition.__table__  # type: ignore[attr-defined]
_OUTBOX = OutboxMessage.__table__  # type: ignore[attr-defined]


def load_active(conn: Connection, journey: str) -> pl.DataFrame:
    active = select(*(_INSTANCES.c[name] for name in INSTANCE_SCHEMA.names())).where(
        _INSTANCES.c.journey == journey, _INSTANCES.c.status == "active"
    )
    # Sorted here: the table is in (journey, user, instance) order, and sorting in SQL would spill millions of rows.
    return read_frame(conn, active, INSTANCE_SCHEMA).sort("instance_id")


def load_known(conn: Connection, journey: str) -> pl.DataFrame:
    """Every instance of the journey, in any status and version: what re-entry and rerun detection look at."""
    known = select(*(_INSTANCES.c[name] for name in KNOWN_SCHEMA.names())).where(_INSTANCES.c.journey == journey)
    return read_frame(conn, known, KNOWN_SCHEMA)


def load_send_history(conn: Connection, *, as_of: datetime, days: int = 8) -> pl.DataFrame:
    """Marketing messages of earlier runs that count against frequency caps: sent, on their way, or held.

    Eight days cover any local calendar week around as_of. Rows of this very as_of are not history: they are an
    earlier attempt of this run (`load_decided`), and counting them as caps would record a message that lost
    arbitration to them as capped instead of `lower_priority`.
    """
    columns = ("user_id", "channel", "journey", "instance_id", "node", "as_of", "not_before")
    history = select(*(_OUTBOX.c[name] for name in columns)).where(
        _OUTBOX.c.status.in_(("planned", "claimed", "sending", "accepted", "retryable")),
        _OUTBOX.c.transactional.is_(False),
        _OUTBOX.c.as_of < as_of,
        _OUTBOX.c.as_of >= as_of - timedelta(days=days),
    )
    moment = pl.Datetime("us", "UTC")
    frame = read_frame(
        conn, history, {name: moment if name in ("as_of", "not_before") else pl.String for name in columns}
    )
    return frame.with_columns(pl.coalesce("not_before", "as_of").alias("sent_at")).drop("not_before")


def load_decided(conn: Connection, *, as_of: datetime, priorities: Mapping[str, int]) -> pl.DataFrame:
    """The marketing messages an earlier attempt of this run kept at planning, one row per message, with their
    journey's priority (0 for a journey no longer defined).

    After a run failed between two journeys' writes, the redone run arbitrates the second journey's messages
    against these exactly as the first attempt did. Kept means not skipped: whatever happened to them since
    (sent, failed) they took the user's channel for this run.
    """
    columns = ("user_id", "channel", "journey", "instance_id", "node", "as_of")
    rows = conn.execute(
        select(*(_OUTBOX.c[name] for name in columns))
        .where(_OUTBOX.c.as_of == as_of, _OUTBOX.c.status != "skipped", _OUTBOX.c.transactional.is_(False))
        .distinct()
    ).all()
    schema = {name: pl.Datetime("us", "UTC") if name == "as_of" else pl.String for name in columns}
    frame = pl.DataFrame([tuple(row) for row in rows], schema=schema, orient="row")
    return frame.with_columns(
        pl.col("journey").replace_strict(priorities, default=0, return_dtype=pl.Int64).alias("priority")
    )


def save_step(conn: Connection, *, result: Advance, outbox: pl.DataFrame, run_id: str) -> int:
    """Write a journey's moved instances, transitions and outbox rows; returns outbox rows newly added.

    Rows go in key order: each table's B-tree then takes them in one sweep instead of at random pages.
    """
    instances = result.instances.with_columns(pl.lit(run_id).alias("run_id"))
    transitions = result.transitions.with_columns(pl.lit(run_id).alias("run_id"))
    upsert_frame(conn, _INSTANCES, _in_key_order(instances, _INSTANCES))
    insert_new_frame(conn, _TRANSITIONS, _in_key_order(transitions, _TRANSITIONS))
    stored = outbox.select(c for c in outbox.columns if c in _OUTBOX.c)
    return insert_new_frame(conn, _OUTBOX, _in_key_order(stored, _OUTBOX))


def _in_key_order(frame: pl.DataFrame, table: Table) -> pl.DataFrame:
    if frame.is_empty():  # possibly without columns: an empty plan
        return frame
    return frame.sort([column.name for column in table.primary_key.columns])
