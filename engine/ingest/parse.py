"""Vectorized parsers from raw columns to canonical types.

Each returns null where a value does not parse, so a validator can flag "present before, null after" without
any per-row Python. Native (Parquet) types are converted here too, so callers need one call per column
whatever the source format.
"""

from __future__ import annotations

import polars as pl

from engine.contract import UTC_TIMESTAMP

_AWARE = "%Y-%m-%dT%H:%M:%S%.f%z"
_NAIVE = "%Y-%m-%dT%H:%M:%S%.f"
_TRUE = ("true", "t", "1", "yes", "y")
_FALSE = ("false", "f", "0", "no", "n")


def is_text(dtype: pl.DataType) -> bool:
    """Whether a column holds text a parser can read (categoricals are text with a dictionary)."""
    return dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum)


def blank_to_null(text: pl.Expr) -> pl.Expr:
    """Strip surrounding whitespace and treat an empty result as absent."""
    stripped = text.cast(pl.String).str.strip_chars()
    return pl.when(stripped != "").then(stripped)


def utc_timestamp(column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A UTC microsecond timestamp from ISO-8601 text or a native datetime.

    Text: `YYYY-MM-DD[T ]HH:MM:SS[.fraction]` followed by `Z`, `±HH:MM`, `±HHMM` or nothing; nothing means UTC.
    Native: a zoned datetime is converted to UTC, a naive one is taken as UTC wall-clock time.
    """
    if isinstance(dtype, pl.Datetime):
        zoned = column.dt.replace_time_zone("UTC") if dtype.time_zone is None else column.dt.convert_time_zone("UTC")
        return zoned.dt.cast_time_unit("us")
    if dtype == pl.Null:
        return pl.lit(None, dtype=UTC_TIMESTAMP)
    text = (
        column.cast(pl.String)
        .str.strip_chars()
        .str.replace(r"^(\d{4}-\d{2}-\d{2}) ", "${1}T")
        .str.replace(r"[Zz]$", "+00:00")
    )
    aware = text.str.to_datetime(_AWARE, time_unit="us", time_zone="UTC", strict=False)
    naive = text.str.to_datetime(_NAIVE, time_unit="us", strict=False).dt.replace_time_zone("UTC")
    return pl.coalesce(aware, naive)


def finite_float(column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A finite Float64 from a number or numeric text; NaN and infinities become null."""
    number = (
        column.cast(pl.Float64)
        if dtype.is_numeric() or dtype == pl.Null
        else blank_to_null(column).cast(pl.Float64, strict=False)
    )
    return pl.when(number.is_finite()).then(number)


def boolean(column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A Boolean from a bool or from text such as `true`/`false`, `1`/`0`, `yes`/`no` (any case)."""
    if dtype == pl.Boolean:
        return column
    if dtype == pl.Null:
        return pl.lit(None, dtype=pl.Boolean)
    word = column.cast(pl.String).str.strip_chars().str.to_lowercase()
    return pl.when(word.is_in(_TRUE)).then(True).when(word.is_in(_FALSE)).then(False)


def as_text(column: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A raw value rendered as text for the quarantine, keeping nested values readable as JSON."""
    if isinstance(dtype, pl.Struct):
        return pl.when(column.is_not_null()).then(column.struct.json_encode())
    return column.cast(pl.String)
