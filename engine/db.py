"""The database: engine creation and the two bulk writes the engine needs, for SQLite and PostgreSQL.

Bulk writes go through SQLAlchemy Core with the dialect's `ON CONFLICT`: inserting a row whose key exists is
how a rerun becomes a no-op, and per-row ORM objects would cost ten times as much at a million rows. Each write
is one statement executed with many parameter sets (compiled once, batched by SQLAlchemy's "insertmanyvalues"
where RETURNING is needed): a multi-row VALUES clause built per batch costs more to compile than the database
spends writing it (a third of a millisecond per row).

Polars frames of a million rows (journey steps) take a shorter road on SQLite: the frame is turned into the
very values SQLAlchemy would store (timestamps as its text format, booleans as integers) by Polars itself, and
its rows go to the driver's executemany as tuples. Per-row dictionaries and SQLAlchemy's per-value processing
cost more than SQLite's own writing at that size. Reading them back (`read_frame`) takes the same road the
other way: timestamps arrive as that text and Polars parses a whole column at once.
"""

from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any, TypeVar

import polars as pl
from sqlalchemy import Engine, Select, Table, create_engine, event, inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

import models.feedback  # registers its tables on SQLModel.metadata, as the next line does
import models.tables  # noqa: F401

_BATCH = 20_000
_Row = TypeVar("_Row")


@cache
def connect(url: str) -> Engine:
    """An engine with the tables created; SQLite gets WAL and a busy timeout so concurrent runs queue.

    One engine per URL and process: every task of a run shares its connection pool.
    """
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    SQLModel.metadata.create_all(engine)
    _require_current_keys(engine)
    return engine


class OutdatedSchemaError(RuntimeError):
    """A table was created by an earlier version with another key; there are no migrations yet."""


def _require_current_keys(engine: Engine) -> None:
    """Refuse a database whose tables have other primary keys than this version's, before any run writes.

    `create_all` leaves existing tables as they are, and a write keyed on columns that are not the table's key
    would fail half-way through a run (or, worse, a rerun would add twins instead of finding its rows).
    """
    inspector = inspect(engine)
    existing = set(inspector.get_table_names())
    for table in SQLModel.metadata.sorted_tables:
        if table.name not in existing:
            continue
        found = inspector.get_pk_constraint(table.name)["constrained_columns"]
        wanted = [column.name for column in table.primary_key.columns]
        if found != wanted:
            raise OutdatedSchemaError(
                f"table {table.name!r} of {engine.url.render_as_string(hide_password=True)} is keyed on {found}, "
                f"this version keys it on {wanted}: it was created by an earlier version. Move the database "
                "aside (or export what you need) and let this version create a new one."
            )


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


def insert_new_frame(conn: Connection, table: Table, frame: pl.DataFrame) -> int:
    """`insert_new` of a frame's rows (columns named as the table's; those left out take their defaults)."""
    if frame.is_empty():
        return 0
    _require_columns(table, frame)
    if conn.dialect.name != "sqlite":
        return insert_new(conn, table, frame.to_dicts())
    columns, batches = _sqlite_batches(table, frame)
    return sum(conn.exec_driver_sql(_sqlite_insert(table, columns), batch).rowcount for batch in batches)


def upsert_frame(conn: Connection, table: Table, frame: pl.DataFrame) -> None:
    """`upsert` of a frame's rows: the frame's columns are overwritten where the key exists (not the others,
    which a new row takes from their defaults)."""
    if frame.is_empty():
        return
    _require_columns(table, frame)
    if conn.dialect.name != "sqlite":
        upsert(conn, table, frame.to_dicts())
        return
    columns, batches = _sqlite_batches(table, frame)
    keys = [column.name for column in table.primary_key.columns]
    statement = _sqlite_insert(table, columns, update=[name for name in frame.columns if name not in keys])
    for batch in batches:
        conn.exec_driver_sql(statement, batch)


def read_frame(conn: Connection, statement: Select[Any], schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """The rows of `statement` as a frame typed by `schema`: one entry per selected column, named and ordered
    as selected. Timestamps are UTC-aware, as `UTCDateTime` returns them."""
    result = conn.execute(statement)
    if conn.dialect.name != "sqlite":
        return pl.DataFrame([tuple(row) for row in result.all()], schema=schema, orient="row")
    # The driver's own tuples, as stored: SQLAlchemy's Row objects and per-value conversions cost more than
    # the query for the millions of rows a journey run loads.
    with result:
        rows = result.cursor.fetchall()
    stored = {name: _stored_dtype(dtype) for name, dtype in schema.items()}
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    frame = pl.DataFrame(dict(zip(stored, columns, strict=True)), schema=stored)
    return frame.with_columns(_from_stored(name, dtype) for name, dtype in schema.items() if stored[name] != dtype)


def _stored_dtype(dtype: pl.DataType) -> pl.DataType:
    if isinstance(dtype, pl.Datetime):
        return pl.String()
    return pl.Int64() if dtype == pl.Boolean else dtype


def _from_stored(name: str, dtype: pl.DataType) -> pl.Expr:
    """The inverse of `_sqlite_value`: timestamps from SQLAlchemy's SQLite text, booleans from integers."""
    if isinstance(dtype, pl.Datetime):
        naive_utc = pl.col(name).str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit=dtype.time_unit)
        if dtype.time_zone is None:
            return naive_utc
        return naive_utc.dt.replace_time_zone("UTC").dt.convert_time_zone(dtype.time_zone)
    return pl.col(name).cast(dtype)


def _require_columns(table: Table, frame: pl.DataFrame) -> None:
    unknown = [name for name in frame.columns if name not in table.c]
    if unknown:
        raise ValueError(f"table {table.name} has no column {', '.join(map(repr, unknown))}")


def _sqlite_batches(table: Table, frame: pl.DataFrame) -> tuple[list[str], Iterator[list[tuple[Any, ...]]]]:
    """The table's columns the write sets, and the frame's rows as SQLite stores them, in that column order, in
    batches.

    Timestamps become SQLAlchemy's SQLite text ("2026-10-01 06:00:00.000000", naive UTC as `UTCDateTime`
    stores them), so rows written here read back, compare and sort exactly like rows written through Core.
    Columns absent from the frame get their scalar defaults, as an INSERT through Core would.
    """
    values: dict[str, pl.Expr] = {}
    for column in table.columns:
        if column.name in frame.columns:
            values[column.name] = _sqlite_value(column.name, frame.schema[column.name])
        elif column.default is not None and column.default.is_scalar:
            values[column.name] = pl.lit(column.default.arg).alias(column.name)
    stored = frame.select(values.values())
    slices = (stored.slice(start, _BATCH).rows() for start in range(0, stored.height, _BATCH))
    return list(values), _prefetched(slices)


def _prefetched(batches: Iterator[_Row]) -> Iterator[_Row]:
    """The batches, each next one built in a thread while the caller writes the current one.

    SQLite lets go of the GIL while it updates its B-trees, which is most of a write: building Python tuples
    for the next batch meanwhile takes the other core instead of adding to the wall time.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-rows") as pool:
        pending = pool.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = pool.submit(next, batches, None)
            yield batch


def _sqlite_value(name: str, dtype: pl.DataType) -> pl.Expr:
    column = pl.col(name)
    if isinstance(dtype, pl.Datetime):
        utc = column.dt.convert_time_zone("UTC") if dtype.time_zone else column
        return utc.dt.replace_time_zone(None).dt.strftime("%Y-%m-%d %H:%M:%S.%6f")
    if isinstance(dtype, pl.Date):
        return column.dt.strftime("%Y-%m-%d")
    if dtype.is_nested() or isinstance(dtype, pl.Object):
        raise ValueError(f"column {name!r} of type {dtype} has no SQLite storage form here")
    return column


def _sqlite_insert(table: Table, columns: list[str], update: list[str] | None = None) -> str:
    """INSERT ... ON CONFLICT for the driver: DO NOTHING, or DO UPDATE of the `update` columns."""
    quote = sqlite.dialect().identifier_preparer.quote
    names = ", ".join(quote(name) for name in columns)
    statement = f"INSERT INTO {quote(table.name)} ({names}) VALUES ({', '.join('?' for _ in columns)})"
    if update is None:
        return f"{statement} ON CONFLICT DO NOTHING"
    keys = ", ".join(quote(column.name) for column in table.primary_key.columns)
    updates = ", ".join(f"{quote(name)} = excluded.{quote(name)}" for name in update)
    return f"{statement} ON CONFLICT ({keys}) DO UPDATE SET {updates}"


def _insert(conn: Connection, table: Table) -> Any:
    dialect = conn.dialect.name
    if dialect == "sqlite":
        return sqlite.insert(table)
    if dialect == "postgresql":
        return postgresql.insert(table)
    raise NotImplementedError(f"database dialect {dialect!r} is not supported: use SQLite or PostgreSQL")


def _batches(rows: Sequence[_Row]) -> Iterable[list[_Row]]:
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
