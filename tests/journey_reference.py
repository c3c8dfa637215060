"""A naive reference for journeys: plain Python, one instance at a time, over raw event tuples.

It shares nothing with the engine but the pydantic models of definitions, and takes from the segment reference
(`tests/segment_reference.py`, itself held to the engine by a property test) its MurmurHash3, its reading of
`where` and its evaluation of conditions: no Polars, no rollups, no fixpoint over frames. It is written from the
documentation of `models/journeys.py` and `engine/journeys.py` (timing), `engine/journey_exits.py` (exit order),
`engine/journey_entry.py` (entry candidates, re-entry, holdout), `engine/journey_waits.py` (wait windows) and
`engine/journey_nodes.py` (split buckets), to be obviously right rather than fast, so a property test can hold
the engine to it.

What it covers: segment entries (the users who entered the segment at a run are given), event entries with or
without `where` and `key` (one subject per user and key), broadcast entries; every re-entry policy, counted per
subject; starts_at / ends_at; holdout; delays by a duration, `until_local_time` (the user's `timezone`, UTC when
missing or unknown) and `until_attribute` with an offset; branches and `exit_when` on any condition the segment
reference reads (events, attributes, segments, all / any / not); wait-for an event (with `where`, `match_key`)
or a segment, with a timeout; splits; sends; exits; a goal (with `where`, `match_key`). Every transition of a run
happens at the run's as_of. Not covered: versions (edits of a live journey), status, sends' delivery controls.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from models.journeys import (
    AttributeDelay,
    BranchNode,
    BroadcastEntry,
    DelayNode,
    EventEntry,
    EventMatch,
    ExitNode,
    JourneyDefinition,
    LocalTimeDelay,
    ReentryLimits,
    SegmentEntry,
    SendNode,
    SplitNode,
    WaitEvent,
    WaitForNode,
    WaitSegment,
)
from models.rules import Rule
from tests.segment_reference import Event as RuleEvent
from tests.segment_reference import _Evaluation, _where, murmur3_32

Event = tuple[str, str, datetime, dict[str, Any]]  # user, event name, time, properties
Subject = tuple[str, str | None]  # user, entry key (None unless the entry is keyed)
Transition = tuple[str | None, str, datetime]  # from node, to node, at
Send = tuple[str, str, str, datetime]  # user, channel, template, as_of
EARLY_EXIT = "(exit)"
QUARTER = timedelta(minutes=15)


@dataclass
class Instance:
    user: str
    key: str | None
    entered_at: datetime
    node: str
    arrived: datetime
    due: datetime | None = None
    active: bool = True
    exit_reason: str | None = None
    holdout: bool = False

    @property
    def subject(self) -> Subject:
        return self.user, self.key


@dataclass
class Reference:
    """One journey's instances across runs, and everything they did.

    `users` holds each user's attributes by id (`timezone`, the dates delays read, what conditions read).
    """

    journey: JourneyDefinition
    users: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    instances: list[Instance] = field(default_factory=list)
    transitions: dict[Subject, list[Transition]] = field(default_factory=dict)
    sends: list[Send] = field(default_factory=list)

    def run(
        self,
        as_of: datetime,
        *,
        entered: list[str],
        events: list[Event],
        memberships: Mapping[str, frozenset[str]],
    ) -> None:
        """A run at `as_of`: entries first, then every active instance moved as far as it can go."""
        seen = _Seen(as_of, [event for event in events if event[2] < as_of], memberships)
        if self._accepts_entries(as_of):
            for subject in self._candidates(seen, entered):
                self._enter(subject, as_of)
        for instance in self.instances:
            if instance.active:
                self._advance(instance, seen)

    def exits(self) -> dict[Subject, list[tuple[str, str | None]]]:
        """Per subject, each instance's (node, exit reason) in entry order; None while active."""
        found: dict[Subject, list[tuple[str, str | None]]] = {}
        for instance in sorted(self.instances, key=lambda i: i.entered_at):
            found.setdefault(instance.subject, []).append((instance.node, instance.exit_reason))
        return found

    def waiting(self) -> list[tuple[str, str | None, str, datetime | None]]:
        """Each active instance's user, key, node and the due time of the wait it is in."""
        return [(i.user, i.key, i.node, i.due) for i in self.instances if i.active]

    # --- entry -----------------------------------------------------------------------------------------------

    def _accepts_entries(self, as_of: datetime) -> bool:
        starts, ends = self.journey.starts_at, self.journey.ends_at
        return (starts is None or starts <= as_of) and (ends is None or as_of < ends)

    def _candidates(self, seen: _Seen, entered: list[str]) -> list[Subject]:
        entry = self.journey.entry
        subjects: set[Subject] = set()
        if isinstance(entry, SegmentEntry):
            subjects = {(user, None) for user in entered}
        elif isinstance(entry, BroadcastEntry):
            broadcast_done = any(instance.entered_at >= entry.at for instance in self.instances)
            if seen.as_of >= entry.at and not broadcast_done:
                subjects = {(user, None) for user in seen.memberships.get(entry.broadcast, ())}
        else:
            assert isinstance(entry, EventEntry)
            for user, name, ts, properties in seen.events:
                if not _matches(entry, name, properties) or ts < seen.as_of - entry.lookback:
                    continue
                key = None if entry.key is None else _text(properties.get(entry.key))
                if entry.key is not None and key is None:
                    continue  # an event without the key enters nobody
                mine = self._of((user, key))
                if any(instance.active for instance in mine):
                    continue
                left = [instance.arrived for instance in mine if not instance.active]
                if left and ts < max(left):
                    continue  # spent: it happened before the subject last left
                subjects.add((user, key))
        return sorted(subject for subject in subjects if self._eligible(subject, seen.as_of))

    def _eligible(self, subject: Subject, as_of: datetime) -> bool:
        mine = self._of(subject)
        if any(instance.active for instance in mine):
            return False
        policy = self.journey.entry.reentry
        if policy == "never":
            return not mine
        if policy == "after_exit":
            return True
        assert isinstance(policy, ReentryLimits)
        if policy.every is not None and mine and max(i.entered_at for i in mine) > as_of - policy.every:
            return False
        return policy.times is None or len(mine) < policy.times

    def _enter(self, subject: Subject, as_of: datetime) -> None:
        user, key = subject
        held_out = murmur3_32(f"journey-holdout:{self.journey.name}:{user}".encode()) % 100 < self.journey.holdout
        instance = Instance(user, key, as_of, self.journey.start, as_of, holdout=held_out)
        self.instances.append(instance)
        self.transitions.setdefault(subject, []).append((None, self.journey.start, as_of))
        self._arrive(instance, self.journey.start, as_of)

    def _of(self, subject: Subject) -> list[Instance]:
        return [instance for instance in self.instances if instance.subject == subject]

    # --- moving ----------------------------------------------------------------------------------------------

    def _advance(self, instance: Instance, seen: _Seen) -> None:
        as_of = seen.as_of
        reason = self._early_exit(instance, seen)
        if reason is not None:
            self._move(instance, EARLY_EXIT, as_of)
            instance.active, instance.exit_reason = False, reason
            return
        matched = self._awaited(instance, seen)
        for _ in range(len(self.journey.nodes) + 2):
            node = self.journey.nodes[instance.node]
            waits = isinstance(node, DelayNode | WaitForNode)
            if waits and instance.due is not None and instance.due > as_of and not matched:
                return
            match node:
                case DelayNode():
                    target = node.next
                case SendNode():
                    if not instance.holdout:
                        self.sends.append((instance.user, node.send.channel, node.send.template, as_of))
                    target = node.next
                case BranchNode():
                    target = next(
                        (case.next for case in node.branch if self._holds(case.when, instance, seen)), node.otherwise
                    )
                case WaitForNode():
                    target = node.matched if matched else node.timed_out
                case SplitNode():
                    target = self._arm(node, instance)
                case _:
                    raise AssertionError(f"an active instance rests at {instance.node}")
            matched = False
            self._move(instance, target, as_of)
            self._arrive(instance, target, as_of)
            if not instance.active:
                return
        raise AssertionError("the reference kept moving: the journey has an instant loop")

    def _early_exit(self, instance: Instance, seen: _Seen) -> str | None:
        """The goal, then each exit criterion in the order written: the reason of the first that applies."""
        goal = self.journey.goal
        if goal is not None:
            end = instance.entered_at + goal.within
            if self._first(goal, goal.match_key, instance, instance.entered_at, end, seen) is not None:
                return "goal"
        return next(
            (criterion.reason for criterion in self.journey.exit_when if self._holds(criterion.when, instance, seen)),
            None,
        )

    def _awaited(self, instance: Instance, seen: _Seen) -> bool:
        """Whether what the wait-for the instance rests at awaits came: the event in (arrival, deadline), or the
        segment at a run after the arrival run, up to the one at the deadline."""
        node = self.journey.nodes[instance.node]
        if not isinstance(node, WaitForNode):
            return False
        assert instance.due is not None
        wanted = node.wait_for
        if isinstance(wanted, WaitSegment):
            inside = instance.user in seen.memberships.get(wanted.segment, ())
            return inside and instance.arrived < seen.as_of <= instance.due
        assert isinstance(wanted, WaitEvent)
        return self._first(wanted, wanted.match_key, instance, instance.arrived, instance.due, seen) is not None

    def _move(self, instance: Instance, target: str, as_of: datetime) -> None:
        self.transitions.setdefault(instance.subject, []).append((instance.node, target, as_of))
        instance.node, instance.arrived, instance.due = target, as_of, None

    def _arrive(self, instance: Instance, node_id: str, as_of: datetime) -> None:
        node = self.journey.nodes[node_id]
        if isinstance(node, DelayNode):
            instance.due = self._delay_end(node, instance, as_of)
        elif isinstance(node, WaitForNode):
            instance.due = as_of + node.timeout
        elif isinstance(node, ExitNode):
            instance.active, instance.exit_reason = False, node.exit

    def _delay_end(self, node: DelayNode, instance: Instance, as_of: datetime) -> datetime | None:
        """When a delay entered at `as_of` ends; None (no wait) for a missing date attribute."""
        attributes = self.users.get(instance.user, {})
        match node.delay:
            case timedelta() as wait:
                return as_of + wait
            case LocalTimeDelay(until_local_time=wall):
                return next_local_time(as_of, attributes.get("timezone"), wall)
            case AttributeDelay(until_attribute=name, offset=offset):
                value = attributes.get(name)
                return None if value is None else _instant(value) + offset
        raise AssertionError(f"no delay {node.delay!r}")

    def _arm(self, node: SplitNode, instance: Instance) -> str:
        bucket = murmur3_32(f"{self.journey.name}:{instance.node}:{instance.user}".encode()) % 10_000
        total = sum(arm.weight for arm in node.split)
        so_far = 0
        for arm in node.split:
            low = so_far * 10_000 // total
            so_far += arm.weight
            if low <= bucket < so_far * 10_000 // total:
                return arm.next
        raise AssertionError(f"bucket {bucket} in no arm")

    # --- what happened ---------------------------------------------------------------------------------------

    def _first(
        self, match: EventMatch, same_key: bool, instance: Instance, after: datetime, before: datetime, seen: _Seen
    ) -> datetime | None:
        """The first event of the instance's user that `match` takes (of its key, with `same_key`) strictly
        after `after` and strictly before `before`."""
        key_property = self.journey.entry_key if same_key else None
        times = [
            ts
            for user, name, ts, properties in seen.events
            if user == instance.user
            and _matches(match, name, properties)
            and after < ts < before
            and (key_property is None or _text(properties.get(key_property)) == instance.key)
        ]
        return min(times, default=None)

    def _holds(self, rule: Rule, instance: Instance, seen: _Seen) -> bool:
        """A condition at the run's as_of, for the instance's user, `since: entry` reading its entry time."""
        user = {**self.users.get(instance.user, {}), "user_id": instance.user, "entered_at": instance.entered_at}
        events = [
            RuleEvent(who, name, ts, None, json.dumps(properties), ts.date())
            for who, name, ts, properties in seen.events
            if who == instance.user
        ]
        members = seen.memberships
        evaluation = _Evaluation(user, events, [], seen.as_of, lambda name: sorted(members.get(name, ())))
        return evaluation.holds(rule)


@dataclass(frozen=True)
class _Seen:
    """What a run sees: its as_of, the events before it, and every segment's members at it."""

    as_of: datetime
    events: list[Event]
    memberships: Mapping[str, frozenset[str]]


def _matches(match: EventMatch, name: str, properties: Mapping[str, Any]) -> bool:
    return name == match.event and _where(json.dumps(properties), match.where)


def _text(value: object) -> str | None:
    """An entry key as text: the property's string, or None when absent (the reference's events carry strings)."""
    assert value is None or isinstance(value, str), f"keys are strings here, got {value!r}"
    return value


def _instant(value: date | datetime) -> datetime:
    """A date attribute as an instant: a date means its midnight UTC, a naive datetime is UTC."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return datetime.combine(value, time(0), tzinfo=UTC)


@lru_cache(maxsize=4096)
def next_local_time(after: datetime, zone: str | None, wall: time) -> datetime:
    """The next `wall` on the clock of `zone` strictly after `after`, read off the clock as it runs.

    Walking UTC quarter hour by quarter hour and only ever converting UTC to local time (the clock's reading is
    then never ambiguous), each local day's moment is the first instant that day at which the clock shows `wall`
    or later: on a day that skips `wall` that is the end of the skip, on a day that shows it twice the first
    showing. The walk starts two days early so the day `after` falls in is read from its start. Quarter hours
    suffice because the zones, walls and run times the tests use all fall on them.
    """
    assert wall.minute % 15 == 0 and after.minute % 15 == 0 and not after.second and not after.microsecond
    tz = _zone(zone)
    reached: set[date] = set()
    instant = after - timedelta(days=2)
    while instant <= after + timedelta(days=3):
        shown = instant.astimezone(tz)
        if shown.time() >= wall and shown.date() not in reached:
            reached.add(shown.date())
            if instant > after:
                return instant
        instant += QUARTER
    raise AssertionError(f"no {wall} in {zone} within three days of {after}")


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")
