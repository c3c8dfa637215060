"""Property filters (`where: {key: value}`) as Polars expressions over the events' JSON `properties` text.

A property is read as text with a JSON path (strings unquoted, numbers and booleans as written), then compared
by the operand's type: a number numerically (so 8 matches 8, 8.0 and "8", since ingest turns a key into text
when one file mixes types), a string as text, a boolean as `true` / `false`. Integers compare as integers when
the text is one, so ids beyond 2**53 stay exact.
"""

from collections.abc import Iterable

import polars as pl

Scalar = bool | int | float | str


def where_expr(where: Iterable[tuple[str, Scalar]]) -> pl.Expr:
    """True for the events whose properties match every (key, value); null properties match nothing."""
    tests = [_matches(pl.col("properties").str.json_path_match(f"$['{key}']"), value) for key, value in where]
    return pl.all_horizontal(tests) if tests else pl.lit(True)


def _matches(text: pl.Expr, value: Scalar) -> pl.Expr:
    if isinstance(value, bool):
        test = text == ("true" if value else "false")
    elif isinstance(value, int):
        as_int = text.cast(pl.Int64, strict=False)
        as_float = text.cast(pl.Float64, strict=False)
        test = pl.when(as_int.is_not_null()).then(as_int == value).otherwise(as_float == value)
    elif isinstance(value, float):
        test = text.cast(pl.Float64, strict=False) == value
    else:
        test = text == value
    return test.fill_null(False)
