"""Compile rules into Polars over a frame of subjects (users, or journey instances).

Evaluation is two passes: first every feature any rule reads (windowed counts and value statistics, first and
last times, message engagement) is computed for the whole population and joined on as a column
(`engine.features`), then each rule becomes one boolean expression over those columns and the users'
attributes (`predicate`). No per-user Python runs.
"""

from collections.abc import Iterator, Mapping
from datetime import datetime

import polars as pl

from engine.behaviour import EventFilter
from engine.features import DeliveryCount, EventStat, Feature, anchors, window_bounds
from engine.rule_attributes import attribute_expr
from engine.rule_buckets import bucket_expr
from engine.rule_properties import Scalar
from engine.rule_windows import resolve_moment
from models.rules import (
    Aggregate,
    AggregateSpec,
    All,
    AnyOf,
    Attribute,
    Clicked,
    EngagementSpec,
    EventTimeSpec,
    FirstPerformed,
    LastPerformed,
    Not,
    NotPerformed,
    Opened,
    Performed,
    RandomBucket,
    Received,
    Rule,
    SegmentRef,
    Window,
)


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


def rule_features(rule: Rule) -> Iterator[Feature]:
    """Every feature the rule reads, in rule order (duplicates included), each window's anchor first."""
    for leaf in leaves(rule):
        match leaf:
            case FirstPerformed(first_performed=spec) | LastPerformed(last_performed=spec):
                yield from anchors(spec.within)  # the time is tested against this window's bounds
        feature = _feature(leaf)
        if feature is not None:
            yield from anchors(feature.window)
            yield feature


def attribute_columns(rule: Rule) -> Iterator[str]:
    """The subjects' columns the rule reads besides `user_id` and its features: attributes, window anchors."""
    for leaf in leaves(rule):
        match leaf:
            case Attribute(attribute=spec):
                yield spec.name
            case FirstPerformed(first_performed=spec) | LastPerformed(last_performed=spec):
                yield from _window_columns(spec.within)
        feature = _feature(leaf)
        if feature is not None:
            yield from _window_columns(feature.window)


def segment_refs(rule: Rule) -> Iterator[str]:
    return (leaf.segment for leaf in leaves(rule) if isinstance(leaf, SegmentRef))


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
            return _count_between(_column(rule), *spec.bounds())
        case NotPerformed():
            return _column(rule) == 0
        case Received(received=spec) | Opened(opened=spec) | Clicked(clicked=spec):
            return _count_between(_column(rule), *spec.bounds())
        case Aggregate(aggregate=spec):
            return _compared(_column(rule), spec)
        case FirstPerformed(first_performed=spec) | LastPerformed(last_performed=spec):
            return _timed(_column(rule), spec, as_of)
        case Attribute(attribute=spec):
            return attribute_expr(spec, as_of)
        case RandomBucket(random_bucket=spec):
            return bucket_expr(spec.seed).is_between(spec.from_, spec.to, closed="left")
        case SegmentRef(segment=name):
            return pl.col("user_id").is_in(memberships[name].implode())
    raise TypeError(f"not a rule: {rule!r}")


def _window_columns(window: Window | None) -> Iterator[str]:
    if window is not None and window.after is not None:
        yield window.after
    if window is not None and window.since is not None:
        yield "entered_at"


def _feature(leaf: Rule) -> Feature | None:
    """The one feature a leaf reads, if it reads one."""
    match leaf:
        case Performed(performed=spec):
            return EventStat(_events(spec.event, spec.where), spec.within, "count")
        case NotPerformed(not_performed=spec):
            return EventStat(_events(spec.event, spec.where), spec.within, "count")
        case Aggregate(aggregate=spec):
            return EventStat(_events(spec.event, spec.where), spec.within, spec.fn)
        case FirstPerformed(first_performed=spec):
            return EventStat(_events(spec.event, spec.where), None, "first")
        case LastPerformed(last_performed=spec):
            return EventStat(_events(spec.event, spec.where), None, "last")
        case Received(received=spec):
            return _deliveries("received", spec)
        case Opened(opened=spec):
            return _deliveries("opened", spec)
        case Clicked(clicked=spec):
            return _deliveries("clicked", spec)
    return None


def _column(leaf: Rule) -> pl.Expr:
    feature = _feature(leaf)
    assert feature is not None
    return pl.col(feature.column)


def _events(event: str, where: Mapping[str, Scalar] | None) -> EventFilter:
    return EventFilter(event, tuple(sorted((where or {}).items())))


def _deliveries(kind: str, spec: EngagementSpec) -> DeliveryCount:
    return DeliveryCount(kind, spec.journey, spec.template, spec.channel, spec.within)


def _count_between(count: pl.Expr, low: int, high: int | None) -> pl.Expr:
    held = count >= low
    return held if high is None else held & (count <= high)


def _compared(value: pl.Expr, spec: AggregateSpec) -> pl.Expr:
    """Every comparison given must hold; a missing statistic (the avg of nothing) fails them all."""
    tests = []
    if spec.lt is not None:
        tests.append(value < spec.lt)
    if spec.lte is not None:
        tests.append(value <= spec.lte)
    if spec.gt is not None:
        tests.append(value > spec.gt)
    if spec.gte is not None:
        tests.append(value >= spec.gte)
    if spec.between is not None:
        tests.append(value.is_between(*spec.between, closed="both"))
    return pl.all_horizontal(tests).fill_null(False)


def _timed(ts: pl.Expr, spec: EventTimeSpec, as_of: datetime) -> pl.Expr:
    """First or last time tests; a user who never performed the event has no time and does not match."""
    tests = []
    if spec.before is not None:
        tests.append(ts < resolve_moment(spec.before, as_of))
    if spec.after is not None:
        tests.append(ts >= resolve_moment(spec.after, as_of))
    if spec.within is not None:
        start, end = window_bounds(spec.within, as_of)
        tests.append((ts >= start) & (ts < end))
    return pl.all_horizontal(tests).fill_null(False)
