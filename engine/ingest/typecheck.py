"""File-level checks of a raw file's columns against the contract, before any of its rows is read.

A missing or mistyped column is a producer bug that affects every row, so it stops the file loudly (naming file,
column, expected and actual type) instead of quarantining a whole file row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import polars as pl

from engine.contract import SnapshotError
from engine.ingest.parse import is_text


@dataclass(frozen=True)
class Accepts:
    """The raw types one column may have: a test plus the words used when it fails."""

    expected: str
    test: Callable[[pl.DataType], bool]

    def or_text(self, allowed: bool) -> Accepts:
        """The same rule, widened to text when the file format carries no types of its own."""
        if not allowed:
            return self
        return Accepts(f"{self.expected} or text", lambda dtype: is_text(dtype) or self.test(dtype))


TEXT = Accepts("text (String)", is_text)
ID = Accepts("text or an integer", lambda dtype: is_text(dtype) or dtype.is_integer())
TIMESTAMP = Accepts("a timestamp (Datetime)", lambda dtype: isinstance(dtype, pl.Datetime))
NUMBER = Accepts("a number (Float64 or an integer)", lambda dtype: dtype.is_numeric())
BOOLEAN = Accepts("Boolean", lambda dtype: dtype == pl.Boolean)
JSON_OBJECT = Accepts("JSON text or a struct", lambda dtype: is_text(dtype) or isinstance(dtype, pl.Struct))
TEXT_LIST = Accepts(
    "a list of text (List(String))",
    lambda dtype: isinstance(dtype, pl.List) and (is_text(dtype.inner) or dtype.inner == pl.Null),
)


def check_columns(schema: pl.Schema, *, accepts: Mapping[str, Accepts], required: Collection[str], rel: str) -> None:
    """Raise SnapshotError for the first missing required column or mistyped column of a raw file.

    An all-null column (type Null) passes: its rows are then judged one by one like any other null.
    """
    missing = [name for name in required if name not in schema]
    if missing:
        found = ", ".join(schema.names()) or "none"
        raise SnapshotError(f"{rel}: missing required column {', '.join(missing)} (columns found: {found})")
    for name, rule in accepts.items():
        dtype = schema.get(name)
        if dtype is not None and dtype != pl.Null and not rule.test(dtype):
            raise SnapshotError(f"{rel}: column {name!r} has type {dtype}, expected {rule.expected}")
