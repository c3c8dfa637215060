"""Event properties: checking that each is a JSON object and writing it in one canonical text form.

Canonical means compact, keys sorted at every depth and null-valued keys dropped, so the same object always
yields the same bytes whatever format or key order it arrived in, and `{"a":1,"b":null}` equals `{"a":1}`
(a Parquet struct cannot tell a null field from an absent one, so no format may).

Polars decodes JSON only into a declared type, so the canonical pass infers one struct type over all objects
of a file first. Two consequences, both documented in the input contract: a key holding integers in some rows
and decimals in others is written as decimals throughout the file (`1` becomes `1.0`), and a key holding text
in some rows and numbers in others is written as text. A file whose objects cannot share one type at all
(a key that is an object in one row and a number in another), or that has more than MAX_KEYS distinct keys,
keeps each object's compact text in its original key order instead; the ingest report flags such files.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import polars as pl

MAX_KEYS = 512
"""More distinct keys than this (ids used as keys, say) would make the file-wide struct type unwieldy."""


def compact_object(text: pl.Expr) -> pl.Expr:
    """The compact JSON text of a value that is a JSON object; null for anything else or for null.

    `json_path_match("$")` re-serializes valid JSON without whitespace and yields null for invalid JSON, which
    makes it a vectorized validator.
    """
    compact = text.str.json_path_match("$")
    return pl.when(compact.str.starts_with("{")).then(compact)


def canonical_objects(objects: pl.Series) -> tuple[pl.Series, bool]:
    """Canonical text for a column of compact JSON objects (nulls stay null).

    Returns:
        The canonical texts and whether they are canonical (False: the compact texts came back unchanged
        because the objects could not share one type).
    """
    present = objects.drop_nulls()
    if present.is_empty():
        return objects, True
    lines = io.BytesIO()
    present.to_frame().write_csv(lines, include_header=False, quote_style="never")
    try:
        inferred = pl.Struct(pl.scan_ndjson(lines.getvalue(), infer_schema_length=None).collect_schema())
        keys = sorted(set(_field_names(inferred)))
        if len(keys) > MAX_KEYS:
            return objects, False
        typed = _sorted_fields(inferred)
        decoded = pl.col("p").str.json_decode(typed)
        encoded = objects.to_frame("p").select(pl.when(decoded.is_not_null()).then(decoded.struct.json_encode()))
    except pl.exceptions.PolarsError:
        return objects, False
    return _drop_null_keys(encoded.to_series(), keys).alias(objects.name), True


def _drop_null_keys(encoded: pl.Series, keys: list[str]) -> pl.Series:
    """Remove `"key":null` members from JSON that Polars encoded from a struct.

    Safe as a text edit because inside a JSON string every quote is escaped, so an unescaped `"key":null`
    preceded by `,` or `{` can only be a member. Members after the first own their leading comma and go first;
    what remains is at most a null first member, followed by a comma or the closing brace.
    """
    if not keys:
        return encoded
    names = "|".join(re.escape(json.dumps(key, ensure_ascii=False)[1:-1]) for key in keys)
    member = f'"(?:{names})":null'
    return encoded.str.replace_all("," + member, "").str.replace_all(r"\{" + member + ",?", "{")


def _sorted_fields(dtype: pl.DataType) -> pl.DataType:
    """The same type with struct fields in name order at every depth, so the encoder writes sorted keys."""
    if isinstance(dtype, pl.Struct):
        fields = sorted(dtype.fields, key=lambda field: field.name)
        return pl.Struct([pl.Field(field.name, _sorted_fields(field.dtype)) for field in fields])
    if isinstance(dtype, pl.List):
        return pl.List(_sorted_fields(dtype.inner))
    return dtype


def _field_names(dtype: pl.DataType) -> Iterator[str]:
    """Every struct field name at any depth."""
    if isinstance(dtype, pl.Struct):
        for field in dtype.fields:
            yield field.name
            yield from _field_names(field.dtype)
    elif isinstance(dtype, pl.List):
        yield from _field_names(dtype.inner)
