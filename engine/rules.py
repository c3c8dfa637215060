"""Compile rules into Polars over a frame of subjects (users, or journey instances).

Evaluation is two passes: first every windowed count any rule needs is computed for the whole population and
joined on as a column (`features`), then each rule becomes one boolean expression over those columns and the
users' attributes (`predicate`). No per-user Python runs.

Null handling is two-valued at each leaf: a comparison with a missing attribute is false, except the negative
operators (`not_equals`, `not_in`), which hold for a missing value; so `not` of a leaf means "the leaf does not
hold", as a marketer reads it.
"""

from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from engine.behaviour import Behaviour, CountFeature, count_constant_window, count_subject_windows
from models.rules import All, AnyOf, Attribute, AttributeSpec, Not, NotPerformed, Performed, Rule, SegmentRef


def leaves(rule: Rule) -> Iterator[Rule]:
    """The conditions of a rule tree that are not `all`, `any` or `not`, in rule order."""
    match rule:
        case All(all=items) | AnyOf(any=items):
            for item in items:
                yield from leaves(item)
        case Not(not_=inner):
            yield from leaves(inner)
        case _:
            yield rule


def count_features(rule: Rule) -> Iterator[CountFeature]:
    """Every windowed count the rule reads, in rule order (duplicates included)."""
    for leaf in leaves(rule):
        match leaf:
            case Performed(performed=spec):
                yield CountFeature(spec.event, spec.within)
            case NotPerformed(not_performed=spec):
                yield CountFeature(spec.event, spec.within)


def segment_refs(rule: Rule) -> Iterator[str]:
    return (leaf.segment for leaf in leaves(rule) if isinstance(leaf, SegmentRef))


def with_features(subjects: pl.LazyFrame, features: list[CountFeature], behaviour: Behaviour) -> pl.LazyFrame:
    """Join each distinct count feature onto the subjects as a column, zero where nothing happened.

    `subjects` has `subject_id`, `user_id`, the users' attributes and, for journeys, `entered_at`.
    """
    for feature in dict.fromkeys(features):
        window = feature.window
        if window is None or window.last is not None:
            counts = count_constant_window(behaviour, feature)
            subjects = subjects.join(counts, on="user_id", how="left")
        else:
            if window.since == "entry":
                start = pl.col("entered_at")
                end = pl.lit(behaviour.as_of)
            else:
                assert window.after is not None and window.for_ is not None
                start = pl.col(window.after)
                end = pl.col(window.after) + window.for_
            bounded = subjects.select("subject_id", "user_id", start.alias("_start"), end.alias("_end"))
            counts = count_subject_windows(behaviour, bounded, feature)
            subjects = subjects.join(counts, on="subject_id", how="left")
        subjects = subjects.with_columns(pl.col(feature.column).fill_null(0))
    return subjects


def predicate(rule: Rule, *, as_of: datetime, memberships: Mapping[str, pl.Series]) -> pl.Expr:
    """The rule as one boolean expression; `memberships` holds the user ids of referenced segments."""
    match rule:
        case All(all=items):
            return pl.all_horizontal(predicate(item, as_of=as_of, memberships=memberships) for item in items)
        case AnyOf(any=items):
            return pl.any_horizontal(predicate(item, as_of=as_of, memberships=memberships) for item in items)
        case Not(not_=inner):
            return ~predicate(inner, as_of=as_of, memberships=memberships)
        case Performed(performed=spec):
            count = pl.col(CountFeature(spec.event, spec.within).column)
            low, high = spec.bounds()
            held = count >= low
            return held if high is None else held & (count <= high)
        case NotPerformed(not_performed=spec):
            return pl.col(CountFeature(spec.event, spec.within).column) == 0
        case Attribute(attribute=spec):
            return _attribute(spec, as_of)
        case SegmentRef(segment=name):
            return pl.col("user_id").is_in(memberships[name].implode())
    raise TypeError(f"not a rule: {rule!r}")


def _attribute(spec: AttributeSpec, as_of: datetime) -> pl.Expr:
    column = pl.col(spec.name)
    operator, operand = spec.operator()
    if operator == "exists":
        return column.is_not_null() if operand else column.is_null()
    if operator in ("not_equals", "not_in"):
        test = column != operand if operator == "not_equals" else ~column.is_in(_values(operand))
        return test.fill_null(True)
    tests: dict[str, Any] = {
        "equals": lambda: column == operand,
        "in_": lambda: column.is_in(_values(operand)),
        "lt": lambda: column < operand,
        "lte": lambda: column <= operand,
        "gt": lambda: column > operand,
        "gte": lambda: column >= operand,
        "older_than": lambda: column < as_of - _delta(operand),
        "newer_than": lambda: column >= as_of - _delta(operand),
    }
    return tests[operator]().fill_null(False)


def _values(operand: list[Any]) -> pl.Series:
    return pl.Series(operand)


def _delta(operand: object) -> timedelta:
    assert isinstance(operand, timedelta)
    return operand
