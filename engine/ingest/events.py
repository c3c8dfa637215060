"""Validating and normalizing one raw events file into canonical rows and quarantined rows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl

from engine.contract import EVENT_SCHEMA, FUTURE_TOLERANCE, QUARANTINE_SCHEMA, Reason, SnapshotError
from engine.ingest.formats import raw_format, raw_schema, scan_raw
from engine.ingest.parse import as_text, blank_to_null, finite_float, is_text, utc_timestamp
from engine.ingest.properties import canonical_objects, compact_object
from engine.ingest.typecheck import ID, JSON_OBJECT, NUMBER, TEXT, TIMESTAMP, Accepts, check_columns

REQUIRED = ("user_id", "event", "ts")
RAW_COLUMNS = ("user_id", "event", "ts", "value", "properties")
_ALL_TEXT = pl.Schema([(name, pl.String()) for name in RAW_COLUMNS])


@dataclass(frozen=True)
class NormalizedFile:
    """One raw file after validation: rows to load, rows to quarantine, and whether properties are canonical."""

    loaded: pl.DataFrame
    quarantined: pl.DataFrame
    properties_canonical: bool


def accepted_types(*, typed: bool) -> dict[str, Accepts]:
    """Column rules for a raw events file; a format without types of its own (`typed=False`) is all text."""
    return {
        "user_id": ID,
        "event": TEXT,
        "ts": TIMESTAMP.or_text(not typed),
        "value": NUMBER.or_text(not typed),
        "properties": JSON_OBJECT,
    }


def validate_events(raw: pl.LazyFrame, schema: pl.Schema, *, load_date: date) -> pl.LazyFrame:
    """Parse every column and name the first problem of each row in `__reason` (null: the row is good).

    Keeps the raw columns as `__raw_<name>` and the 1-based record number as `__row`, so the quarantine can
    show what arrived exactly as it arrived.

    Args:
        raw: the raw file's scan.
        schema: its columns, already checked against `accepted_types`.
        load_date: the arrival-date partition, which bounds how late in time `ts` may be.
    """

    def dtype(name: str) -> pl.DataType:
        return schema.get(name, pl.Null())

    def raw_col(name: str) -> pl.Expr:
        return pl.col(f"__raw_{name}")

    def present(name: str) -> pl.Expr:
        if is_text(dtype(name)):
            return blank_to_null(raw_col(name)).is_not_null()
        return raw_col(name).is_not_null()

    if is_text(dtype("properties")):
        properties = compact_object(blank_to_null(raw_col("properties")))
    else:
        properties = as_text(raw_col("properties"), dtype("properties"))
    limit = datetime.combine(load_date + timedelta(days=1), time(), tzinfo=UTC) + FUTURE_TOLERANCE
    reason = (
        pl.when(pl.col("user_id").is_null())
        .then(pl.lit(Reason.MISSING_USER_ID.value))
        .when(pl.col("event").is_null())
        .then(pl.lit(Reason.MISSING_EVENT.value))
        .when(pl.col("ts").is_null())
        .then(pl.lit(Reason.BAD_TS.value))
        .when(pl.col("ts") > pl.lit(limit))
        .then(pl.lit(Reason.FUTURE_TS.value))
        .when(pl.col("value").is_null() & present("value"))
        .then(pl.lit(Reason.BAD_VALUE.value))
        .when(pl.col("properties").is_null() & present("properties"))
        .then(pl.lit(Reason.BAD_PROPERTIES.value))
    )
    return (
        raw.with_row_index("__row", offset=1)
        .select(
            pl.col("__row"),
            *[(pl.col(name) if name in schema else pl.lit(None)).alias(f"__raw_{name}") for name in RAW_COLUMNS],
        )
        .with_columns(
            blank_to_null(raw_col("user_id")).alias("user_id"),
            blank_to_null(raw_col("event")).alias("event"),
            utc_timestamp(raw_col("ts"), dtype("ts")).alias("ts"),
            finite_float(raw_col("value"), dtype("value")).alias("value"),
            properties.alias("properties"),
            pl.lit(load_date).alias("load_date"),
        )
        .with_columns(reason.alias("__reason"))
    )


def normalize_file(path: Path, *, rel: str, load_date: date) -> NormalizedFile:
    """Read, check and split one raw events file; raises SnapshotError before returning anything.

    The file is processed in memory (one arrival day of one producer, typically up to a few million rows):
    the canonical form of `properties` needs a type inferred from the whole file.
    """
    fmt = raw_format(path, rel=rel)
    raw = scan_raw(path, rel=rel, ndjson_schema=_ALL_TEXT if fmt == "ndjson" else None)
    schema = raw_schema(raw, rel=rel)
    check_columns(schema, accepts=accepted_types(typed=fmt == "parquet"), required=REQUIRED, rel=rel)
    base = validate_events(raw, schema, load_date=load_date)
    good = base.filter(pl.col("__reason").is_null()).select(
        [pl.col(name).cast(dtype) for name, dtype in EVENT_SCHEMA.items()]
    )
    bad = base.filter(pl.col("__reason").is_not_null()).select(
        *[as_text(pl.col(f"__raw_{name}"), schema.get(name, pl.Null())).alias(name) for name in RAW_COLUMNS],
        pl.lit(rel).alias("source_file"),
        pl.col("__row").alias("row"),
        pl.col("__reason").alias("reason"),
    )
    # NDJSON has no header: there a column is missing when no record carries it.
    plans = [good, bad]
    if fmt == "ndjson":
        plans.append(raw.select([pl.col(name).is_not_null().any() for name in REQUIRED]))
    try:
        loaded, quarantined, *seen = pl.collect_all(plans)
    except pl.exceptions.PolarsError as exc:
        raise SnapshotError(f"{rel}: unreadable as {fmt}: {exc}") from exc
    if seen and loaded.height + quarantined.height:
        missing = [name for name, hit in zip(REQUIRED, seen[0].row(0), strict=True) if not hit]
        if missing:
            raise SnapshotError(f"{rel}: missing required column {', '.join(missing)} (no record has it)")
    properties, canonical = canonical_objects(loaded["properties"])
    loaded = loaded.with_columns(properties).sort("ts", "user_id", "event", maintain_order=True)
    return NormalizedFile(
        loaded=loaded, quarantined=quarantined.cast(dict(QUARANTINE_SCHEMA)), properties_canonical=canonical
    )
