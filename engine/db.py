"""The database: engine creation and the two bulk writes the engine needs, for SQLite and PostgreSQL.

Bulk writes go through SQLAlchemy Core with the dialect's `ON CONFLICT`: inserting a row whose key exists is
how a rerun becomes a no-op, and per-row ORM objects would cost ten times as much at a million rows.
"""

from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import models.feedback  # registers its tables on SQLModel.metadata, as the next line does
import models.tables  # noqa: F401

_BATCH = 5_000


@cache
def connect(url: str) -> Engine:
    """An engine with the tables created; SQLite gets WAL and a busy timeout so concurrent runs queue.

    One engine per URL and process: every task of a run shares its connection pool.
    """
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    SQLModel.metadata.create_all(engine)
    return engine


def insert_new(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert rows whose primary key is not there yet; returns how many were new.

    New rows are counted from RETURNING: psycopg reports no row count (-1) for a multi-row INSERT that
    SQLAlchemy builds, so a count from `rowcount` would be wrong on PostgreSQL.
    """
    inserted = 0
    keys = list(table.primary_key.columns)
    for batch in _batches(rows):
        statement = _insert(conn, table).values(batch).on_conflict_do_nothing().returning(*keys)
        inserted += len(conn.execute(statement).all())
    return inserted


def upsert(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows, or overwrite every non-key column of rows whose primary key exists."""
    keys = [column.name for column in table.primary_key.columns]
    for batch in _batches(rows):
        statement = _insert(conn, table).values(batch)
        updates = {name: statement.excluded[name] for name in batch[0] if name not in keys}
        conn.execute(statement.on_conflict_do_update(index_elements=keys, set_=updates))


def _insert(conn: Connection, table: Table) -> Any:
    dialect = conn.dialect.name
    if dialect == "sqlite":
        return sqlite.insert(table)
    if dialect == "postgresql":
        return postgresql.insert(table)
    raise NotImplementedError(f"database dialect {dialect!r} is not supported: use SQLite or PostgreSQL")


def _batches(rows: Sequence[Mapping[str, Any]]) -> Iterable[list[Mapping[str, Any]]]:
    # SQLite allows 32,766 bound parameters per statement; 5,000 rows of up to ~20 columns stay well inside it.
    size = max(1, min(_BATCH, 30_000 // max(1, len(rows[0]) if rows else 1)))
    for start in range(0, len(rows), size):
        yield list(rows[start : start + size])


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
