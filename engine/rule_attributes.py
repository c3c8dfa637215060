"""Attribute conditions as Polars expressions over the subjects' attribute columns.

Null handling is two-valued: a test on a missing attribute is false, except the negative operators
(`not_equals`, `not_in`), which hold for a missing value; so `not` of a leaf means "the leaf does not hold",
as a marketer reads it.
"""

from datetime import datetime, timedelta
from typing import Any

import polars as pl

from engine.rule_windows import resolve_moment
from models.rules import AttributeSpec


def attribute_expr(spec: AttributeSpec, as_of: datetime) -> pl.Expr:
    column = pl.col(spec.name)
    operator, operand = spec.operator()
    match operator:
        case "exists":
            return column.is_not_null() if operand else column.is_null()
        case "not_equals":
            return (column != operand).fill_null(True)
        case "not_in":
            return (~column.is_in(pl.Series(operand).implode())).fill_null(True)
        case "equals":
            test = column == operand
        case "in_":
            test = column.is_in(pl.Series(operand).implode())
        case "lt":
            test = column < operand
        case "lte":
            test = column <= operand
        case "gt":
            test = column > operand
        case "gte":
            test = column >= operand
        case "between":
            test = column.is_between(*operand, closed="both")
        case "contains":
            test = _contains(column, operand, spec.name)
        case "matches":
            test = column.str.contains(operand)
        case "older_than" | "newer_than":
            assert isinstance(operand, timedelta)
            test = column < as_of - operand if operator == "older_than" else column >= as_of - operand
        case "before":
            test = column < resolve_moment(operand, as_of)
        case "after":
            test = column >= resolve_moment(operand, as_of)
        case _:
            raise ValueError(f"unknown attribute operator {operator!r}")
    return test.fill_null(False)


def _contains(column: pl.Expr, operand: Any, name: str) -> pl.Expr:
    """Substring on text, membership on a list: which one depends on the column's type, known only at run."""

    def test(values: pl.Series) -> pl.Series:
        if values.dtype == pl.String and isinstance(operand, str):
            return values.str.contains(operand, literal=True)
        if isinstance(values.dtype, pl.List):
            return values.list.contains(operand)
        raise TypeError(f"attribute {name!r} of type {values.dtype} cannot contain {operand!r}")

    return column.map_batches(test, return_dtype=pl.Boolean, is_elementwise=True)
