"""Canonical event properties: checked against Python's json as a naive reference on random objects."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.ingest.properties import canonical_objects, compact_object


def reference(obj: Any) -> Any:
    """What canonical means: object members with null values dropped at every depth (list items kept)."""
    if isinstance(obj, dict):
        return {key: reference(value) for key, value in obj.items() if value is not None}
    if isinstance(obj, list):
        return [reference(item) for item in obj]
    return obj


def canonical(texts: list[str | None]) -> list[str | None]:
    compact = pl.DataFrame({"p": texts}, schema={"p": pl.String}).select(compact_object(pl.col("p"))).to_series()
    result, is_canonical = canonical_objects(compact)
    assert is_canonical
    return result.to_list()


TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)
# One type per key across a file, as producers send them; members may be absent, null or set.
OBJECTS = st.fixed_dictionaries(
    {},
    optional={
        "s": st.none() | TEXT,
        "i": st.none() | st.integers(-(2**62), 2**62),
        "b": st.none() | st.booleans(),
        "o": st.none()
        | st.fixed_dictionaries({}, optional={"y": st.none() | TEXT, "x": st.none() | st.integers(0, 9)}),
        "l": st.none() | st.lists(st.none() | st.integers(0, 9), max_size=3),
        'we"ird\\ key': st.none() | TEXT,
    },
)


@settings(max_examples=60, deadline=None)
@given(st.lists(OBJECTS, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_canonical_text_equals_sorted_compact_json_without_nulls(objects: list[dict[str, Any]], rnd: Any) -> None:
    shuffled = []
    for obj in objects:
        items = list(obj.items())
        rnd.shuffle(items)
        shuffled.append(json.dumps(dict(items), indent=rnd.choice([None, 1])))
    expected = [
        json.dumps(reference(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False) for obj in objects
    ]
    assert canonical(shuffled) == expected


def test_key_order_and_whitespace_do_not_matter() -> None:
    assert canonical(['{"b": 1, "a": {"d": [1, 2], "c": "x"}}', '{"a":{"c":"y","d":[]},"b":2}']) == [
        '{"a":{"c":"x","d":[1,2]},"b":1}',
        '{"a":{"c":"y","d":[]},"b":2}',
    ]


def test_text_that_looks_like_a_null_member_is_kept() -> None:
    assert canonical(['{"q":"x,\\"b\\":null","b":null}']) == ['{"q":"x,\\"b\\":null"}']


def test_non_objects_are_not_properties() -> None:
    texts = ['{"a":1}', "[1]", '"text"', "3", "{bad", "", None]
    compact = pl.Series(texts, dtype=pl.String).to_frame("p").select(compact_object(pl.col("p"))).to_series()
    assert compact.to_list() == ['{"a":1}', None, None, None, None, None, None]


def test_numbers_widen_to_the_file_type() -> None:
    """Documented: one type per key per file, so an integer beside a decimal is written as a decimal."""
    assert canonical(['{"price":1}', '{"price":2.5}']) == ['{"price":1.0}', '{"price":2.5}']
