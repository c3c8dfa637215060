"""A naive reference for segment rules: plain Python, one user at a time, over raw event tuples.

It shares nothing with the engine but the pydantic models of definitions: no Polars, no rollups, no windows
split at midnight, no microsecond shifts for open ends. It is written from the rule language's documentation
(`models/rules.py`) to be obviously right rather than fast, so property tests can hold the engine to it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from models.rules import (
    Aggregate,
    All,
    AnyOf,
    Attribute,
    AttributeSpec,
    Clicked,
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
from models.segments import SegmentDefinition


@dataclass(frozen=True)
class Event:
    user_id: str
    event: str
    ts: datetime
    value: float | None
    properties: str | None  # JSON object text
    load_date: date


@dataclass(frozen=True)
class Delivery:
    user_id: str
    journey: str
    template: str
    channel: str
    kind: str
    ts: datetime


def reference_memberships(
    definitions: Mapping[str, SegmentDefinition],
    users: Sequence[Mapping[str, Any]],
    events: Sequence[Event],
    deliveries: Sequence[Delivery],
    as_of: datetime,
) -> dict[str, list[str]]:
    """Each segment's sorted user ids at as_of; an event is seen if it happened before as_of and arrived by
    as_of's date, a delivery if it happened before as_of."""
    seen = [e for e in events if e.ts < as_of and e.load_date <= as_of.date()]
    sent = [d for d in deliveries if d.ts < as_of]
    results: dict[str, list[str]] = {}

    def members(name: str) -> list[str]:
        if name not in results:
            rule = definitions[name].rule
            results[name] = sorted(
                user["user_id"]
                for user in users
                if _Evaluation(
                    user,
                    [e for e in seen if e.user_id == user["user_id"]],
                    [d for d in sent if d.user_id == user["user_id"]],
                    as_of,
                    members,
                ).holds(rule)
            )
        return results[name]

    return {name: members(name) for name in definitions}


@dataclass
class _Evaluation:
    user: Mapping[str, Any]
    events: list[Event]
    deliveries: list[Delivery]
    as_of: datetime
    members: Callable[[str], list[str]]

    def holds(self, rule: Rule) -> bool:
        match rule:
            case All(all=items):
                return all(self.holds(item) for item in items)
            case AnyOf(any=items):
                return any(self.holds(item) for item in items)
            case Not(not_=inner):
                return not self.holds(inner)
            case Performed(performed=spec):
                return _in_bounds(len(self._events(spec.event, spec.where, spec.within)), spec.bounds())
            case NotPerformed(not_performed=spec):
                return not self._events(spec.event, spec.where, spec.within)
            case Aggregate(aggregate=spec):
                values = [e.value for e in self._events(spec.event, spec.where, spec.within) if e.value is not None]
                if spec.fn == "sum":
                    stat: float | None = sum(values)
                elif not values:
                    stat = None
                else:
                    stat = {"avg": sum(values) / len(values), "min": min(values), "max": max(values)}[spec.fn]
                return stat is not None and _compares(stat, spec)
            case FirstPerformed(first_performed=spec):
                return self._timed(spec, first=True)
            case LastPerformed(last_performed=spec):
                return self._timed(spec, first=False)
            case Received(received=spec) | Opened(opened=spec) | Clicked(clicked=spec):
                kind = type(rule).__name__.lower()
                inside = self._inside(spec.within)
                count = sum(
                    1
                    for d in self.deliveries
                    if d.kind == kind
                    and spec.journey in (None, d.journey)
                    and spec.template in (None, d.template)
                    and spec.channel in (None, d.channel)
                    and inside(d.ts)
                )
                return _in_bounds(count, spec.bounds())
            case Attribute(attribute=spec):
                return self._attribute(spec)
            case RandomBucket(random_bucket=spec):
                bucket = murmur3_32(f"{spec.seed}:{self.user['user_id']}".encode()) % 100
                return spec.from_ <= bucket < spec.to
            case SegmentRef(segment=name):
                return self.user["user_id"] in self.members(name)
        raise TypeError(rule)

    def _events(self, name: str, where: Mapping[str, Any] | None, window: Window | None) -> list[Event]:
        inside = self._inside(window)
        return [e for e in self.events if e.event == name and _where(e.properties, where) and inside(e.ts)]

    def _inside(self, window: Window | None) -> Callable[[datetime], bool]:
        """Whether a time is in the window, for this user; every window ends before as_of."""
        if window is None:
            return lambda ts: ts < self.as_of
        end: datetime | None = None
        if window.last is not None:
            start: datetime | None = self.as_of - window.last
            end = self.as_of
        elif window.between is not None:
            start, end = window.between.from_, window.between.to
        elif window.since is not None:
            start = self.user.get("entered_at")
        else:
            if window.after is not None:
                start = self.user.get(window.after)
            else:
                start = min((e.ts for e in self.events if e.event == window.after_first), default=None)
            if start is not None and window.for_ is not None:
                end = start + window.for_
        if start is None:
            return lambda ts: False
        with_start = window.closed in ("left", "both")
        with_end = window.closed in ("right", "both")

        def inside(ts: datetime) -> bool:
            after_start = ts >= start if with_start else ts > start
            before_end = end is None or (ts <= end if with_end else ts < end)
            return after_start and before_end and ts < self.as_of

        return inside

    def _timed(self, spec: EventTimeSpec, *, first: bool) -> bool:
        times = [e.ts for e in self._events(spec.event, spec.where, None)]
        if not times:
            return False
        ts = min(times) if first else max(times)
        if spec.before is not None and not ts < self._moment(spec.before):
            return False
        if spec.after is not None and not ts >= self._moment(spec.after):
            return False
        return spec.within is None or self._inside(spec.within)(ts)

    def _moment(self, moment: timedelta | datetime) -> datetime:
        return self.as_of - moment if isinstance(moment, timedelta) else moment

    def _attribute(self, spec: AttributeSpec) -> bool:
        value = self.user.get(spec.name)
        operator, operand = spec.operator()
        if operator == "exists":
            return (value is not None) == operand
        if operator == "not_equals":
            return value is None or value != operand
        if operator == "not_in":
            return value is None or value not in operand
        if value is None:
            return False
        match operator:
            case "equals":
                return value == operand
            case "in_":
                return value in operand
            case "lt":
                return value < operand
            case "lte":
                return value <= operand
            case "gt":
                return value > operand
            case "gte":
                return value >= operand
            case "between":
                return operand[0] <= value <= operand[1]
            case "contains":
                return operand in value
            case "matches":
                return re.search(operand, value) is not None
            case "older_than":
                return value < self.as_of - operand
            case "newer_than":
                return value >= self.as_of - operand
            case "before":
                return value < self._moment(operand)
            case "after":
                return value >= self._moment(operand)
        raise ValueError(operator)


def _in_bounds(count: int, bounds: tuple[int, int | None]) -> bool:
    low, high = bounds
    return count >= low and (high is None or count <= high)


def _compares(stat: float, spec: Any) -> bool:
    return (
        (spec.lt is None or stat < spec.lt)
        and (spec.lte is None or stat <= spec.lte)
        and (spec.gt is None or stat > spec.gt)
        and (spec.gte is None or stat >= spec.gte)
        and (spec.between is None or spec.between[0] <= stat <= spec.between[1])
    )


def _where(properties: str | None, where: Mapping[str, Any] | None) -> bool:
    """Each property, as text (numbers as JSON writes them), equals the operand: numbers compared as numbers."""
    if not where:
        return True
    decoded = json.loads(properties) if properties else {}
    for key, operand in where.items():
        value = decoded.get(key)
        if value is None or isinstance(value, dict | list):
            return False
        text = json.dumps(value) if not isinstance(value, str) else value
        if isinstance(operand, bool):
            held = text == ("true" if operand else "false")
        elif isinstance(operand, int | float):
            number = _number(text)
            held = number is not None and number == operand
        else:
            held = text == operand
        if not held:
            return False
    return True


def _number(text: str) -> float | None:
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text):
        return float(text)
    return None


def murmur3_32(data: bytes) -> int:
    """MurmurHash3 x86 32-bit with seed 0, straight from its reference description."""
    mask = 0xFFFFFFFF

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    def scramble(k: int) -> int:
        return (rotl((k * 0xCC9E2D51) & mask, 15) * 0x1B873593) & mask

    h = 0
    whole = len(data) - len(data) % 4
    for i in range(0, whole, 4):
        h = (rotl(h ^ scramble(int.from_bytes(data[i : i + 4], "little")), 13) * 5 + 0xE6546B64) & mask
    if len(data) > whole:
        h ^= scramble(int.from_bytes(data[whole:], "little"))
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    return h ^ (h >> 16)
