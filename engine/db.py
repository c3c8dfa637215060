"""The database: engine creation and the two bulk writes the engine needs, for SQLite and PostgreSQL.

Bulk writes go through SQLAlchemy Core with the dialect's `ON CONFLICT`: inserting a row whose key exists is
how a rerun becomes a no-op, and per-row ORM objects would cost ten times as much at a million rows. Each write
is one statement executed with many parameter sets (compiled once, batched by SQLAlchemy's "insertmanyvalues"
where RETURNING is needed): a multi-row VALUES clause built per batch costs more to compile than the database
spends writing it (a third of a millisecond per row).
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

_BATCH = 20_000


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

    SQLite's executemany sums the rows each INSERT changed, so its row count is the answer; on PostgreSQL new
    rows are counted from RETURNING: psycopg reports no row count (-1) for the multi-row INSERT that SQLAlchemy
    builds, so a count from `rowcount` would be wrong there. SQLite is spared returning and fetching every key.
    """
    if not rows:
        return 0
    if conn.dialect.name == "sqlite":
        counting = _insert(conn, table).on_conflict_do_nothing()
        return sum(conn.execute(counting, batch).rowcount for batch in _batches(rows))
    keys = list(table.primary_key.columns)
    statement = _insert(conn, table).on_conflict_do_nothing().returning(*keys)
    return sum(len(conn.execute(statement, batch).all()) for batch in _batches(rows))


def upsert(conn: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows, or overwrite every non-key column of rows whose primary key exists."""
    if not rows:
        return
    keys = [column.name for column in table.primary_key.columns]
    statement = _insert(conn, table)
    updates = {name: statement.excluded[name] for name in rows[0] if name not in keys}
    upserting = statement.on_conflict_do_update(index_elements=keys, set_=updates)
    for batch in _batches(rows):
        conn.execute(upserting, batch)


def _insert(conn: Connection, table: Table) -> Any:
    dialect = conn.dialect.name
    if dialect == "sqlite":
        return sqlite.insert(table)
    if dialect == "postgresql":
        return postgresql.insert(table)
    raise NotImplementedError(f"database dialect {dialect!r} is not supported: use SQLite or PostgreSQL")


def _batches(rows: Sequence[Mapping[str, Any]]) -> Iterable[list[Mapping[str, Any]]]:
    """Slices of rows, so that SQLAlchemy's processed copy of the parameters stays small beside the rows."""
    for start in range(0, len(rows), _BATCH):
        yield list(rows[start : start + _BATCH])


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # Up to 128 MiB of page cache (the default is 2 MiB): a million-row write updates indexes (user_id) in random
    # order, and with a small cache most of those updates first read their page back from the file.
    cursor.execute("PRAGMA cache_size=-131072")
    cursor.close()
