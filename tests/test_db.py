"""The two bulk writes, on SQLite and PostgreSQL: a rerun that writes the same keys changes nothing."""

from datetime import UTC, datetime

from sqlalchemy import select

from engine.db import connect, insert_new, upsert
from models.tables import SegmentSize

SIZES = SegmentSize.__table__
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
