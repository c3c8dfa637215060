"""The two bulk writes, on SQLite and PostgreSQL: a rerun that writes the same keys changes nothing."""

import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import delete, func, select

from engine.db import OutdatedSchemaError, connect, insert_new, insert_new_frame, read_frame, upsert, upsert_frame
from models.tables import OutboxMessage, SegmentSize

SIZES = SegmentSize.__table__
OUTBOX = OutboxMessage.__table__
AS_OF = datetime(2026, 10, 1, 6, tzinfo=UTC)


def size(segment: str, members: int) -> dict[str, object]:
    return {
        "segment": segment,
        "as_of": AS_OF,
        "run_id": "run-1",
        "definition_version": "v1",
        "size": members,
        "entered": members,
        "exited": 0,
    }


def test_insert_new_counts_only_the_rows_it_added(database_url: str):
    engine = connect(database_url)
    with engine.begin() as conn:
        assert insert_new(conn, SIZES, [size("a", 1), size("b", 2)]) == 2
        assert insert_new(conn, SIZES, [size("b", 20), size("c", 3)]) == 1
    with engine.connect() as conn:
        assert dict(conn.execute(select(SIZES.c.segment, SIZES.c.size)).all()) == {"a": 1, "b": 2, "c": 3}


def test_upsert_overwrites_existing_keys_and_keeps_utc(database_url: str):
    engine = connect(database_url)
    with engine.begin() as conn:
        upsert(conn, SIZES, [size("a", 1)])
        upsert(conn, SIZES, [size("a", 5), size("b", 2)])
    with engine.connect() as conn:
        rows = conn.execute(select(SIZES.c.segment, SIZES.c.size, SIZES.c.as_of).order_by(SIZES.c.segment)).all()
    assert [tuple(row) for row in rows] == [("a", 5, AS_OF), ("b", 2, AS_OF)]


def _outbox_rows() -> list[dict[str, object]]:
    """Outbox rows with every kind of value the frame writer converts: aware timestamps (one not UTC), a
    nullable timestamp, a boolean, nulls, and columns left to their defaults (attempts)."""
    plus_two = timezone(timedelta(hours=2))
    return [
        {
            "send_key": f"k{index}",
            "run_id": "run-1",
            "as_of": AS_OF + timedelta(microseconds=index),
            "journey": "cart",
            "journey_version": "v1",
            "node": "email",
            "instance_id": f"i{index}",
            "user_id": f"u{index}",
            "channel": "email",
            "template": "cart_reminder",
            "variant": None if index % 2 else "saved",
            "recipient": f"u{index}@example.com",
            "status": "planned",
            "transactional": bool(index % 3 == 0),
            "not_before": None if index % 2 else datetime(2026, 10, 1, 9, 30, tzinfo=plus_two),
        }
        for index in range(5)
    ]


def _stored(url: str) -> list[tuple[object, ...]]:
    """Every column of every outbox row, as the driver returns them (no SQLAlchemy type processing)."""
    with connect(url).connect() as conn:
        return [tuple(row) for row in conn.exec_driver_sql("SELECT * FROM outbox ORDER BY send_key").all()]


def test_frame_writes_store_exactly_what_core_writes_store(database_url: str, tmp_path: Path):
    """The frame writers bypass SQLAlchemy's value processing on SQLite: what they store must be byte for
    byte what Core stores, or comparisons and reads of their rows would differ."""
    rows = _outbox_rows()
    core_url = f"sqlite:///{tmp_path / 'core.db'}" if database_url.startswith("sqlite") else database_url
    frame_url = database_url if database_url.startswith("sqlite") else None
    with connect(core_url).begin() as conn:
        assert insert_new(conn, OUTBOX, rows) == 5
    expected = _stored(core_url)
    if frame_url is None:  # PostgreSQL: one database, so write the frame's rows into it again after clearing it
        with connect(database_url).begin() as conn:
            conn.execute(delete(OUTBOX))
        frame_url = database_url
    frame = pl.DataFrame(rows).with_columns(pl.col("as_of", "not_before").dt.convert_time_zone("UTC"))
    with connect(frame_url).begin() as conn:
        assert insert_new_frame(conn, OUTBOX, frame.head(3)) == 3
        assert insert_new_frame(conn, OUTBOX, frame) == 2  # the first three exist: only two are new
    assert _stored(frame_url) == expected
    with connect(frame_url).connect() as conn:
        later = conn.execute(select(func.count()).where(OUTBOX.c.as_of > AS_OF + timedelta(microseconds=2)))
        assert later.scalar_one() == 2  # compared in SQL against a value SQLAlchemy binds


def test_upsert_frame_overwrites_the_frames_columns_only(database_url: str):
    rows = _outbox_rows()
    engine = connect(database_url)
    with engine.begin() as conn:
        insert_new(conn, OUTBOX, [row | {"attempts": 2} for row in rows[:2]])
        changed = pl.DataFrame(rows[:3]).with_columns(status=pl.lit("accepted"))
        with pytest.raises(ValueError, match="no column 'colour'"):
            upsert_frame(conn, OUTBOX, changed.with_columns(colour=pl.lit("red")))
        upsert_frame(conn, OUTBOX, changed)
    with engine.connect() as conn:
        stored = conn.execute(
            select(OUTBOX.c.send_key, OUTBOX.c.status, OUTBOX.c.attempts, OUTBOX.c.as_of).order_by(OUTBOX.c.send_key)
        )
        assert [tuple(row) for row in stored] == [
            ("k0", "accepted", 2, AS_OF),  # attempts is not in the frame: kept
            ("k1", "accepted", 2, AS_OF + timedelta(microseconds=1)),
            ("k2", "accepted", 0, AS_OF + timedelta(microseconds=2)),  # new: attempts takes its default
        ]


def test_a_database_keyed_by_an_earlier_version_is_refused_before_any_write(tmp_path: Path):
    """Transitions were keyed on (instance_id, step) before they were keyed on the journey first."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    with closing(sqlite3.connect(tmp_path / "old.db")) as old:
        old.execute("CREATE TABLE journey_transition (instance_id TEXT, step INTEGER, PRIMARY KEY (instance_id, step))")
    with pytest.raises(OutdatedSchemaError, match=r"'journey_transition' .* keyed on \['instance_id', 'step'\]"):
        connect(url)


def test_read_frame_reads_back_what_core_wrote(database_url: str):
    """On SQLite `read_frame` parses the driver's stored text itself: it must give what SQLAlchemy's own type
    processing gives, timestamps (with and without microseconds, null) and booleans included."""
    rows = _outbox_rows()
    columns = ("send_key", "as_of", "not_before", "transactional", "variant", "attempts")
    moment = pl.Datetime("us", "UTC")
    schema = {"send_key": pl.String, "as_of": moment, "not_before": moment, "transactional": pl.Boolean,
              "variant": pl.String, "attempts": pl.Int64}  # fmt: skip
    engine = connect(database_url)
    with engine.begin() as conn:
        insert_new(conn, OUTBOX, rows)
    query = select(*(OUTBOX.c[name] for name in columns)).order_by(OUTBOX.c.send_key)
    with engine.connect() as conn:
        through_core = pl.DataFrame([tuple(row) for row in conn.execute(query).all()], schema=schema, orient="row")
        read = read_frame(conn, query, schema)
        empty = read_frame(conn, query.where(OUTBOX.c.send_key == "none"), schema)
    assert read.equals(through_core)
    assert read.schema == pl.Schema(schema)
    assert read.get_column("as_of").to_list() == [row["as_of"] for row in rows]
    assert read.get_column("transactional").to_list() == [row["transactional"] for row in rows]
    assert empty.is_empty() and empty.schema == pl.Schema(schema)
