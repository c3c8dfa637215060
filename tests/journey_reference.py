"""A naive reference for journeys: plain Python, one instance at a time, over raw event tuples.

It shares nothing with the engine but the pydantic models of definitions (and the MurmurHash3 written for the
segment reference): no Polars, no rollups, no fixpoint over frames. It is written from the documentation of
`models/journeys.py` and `engine/journeys.py` (timing), `engine/journey_exits.py` (exit order),
`engine/journey_entry.py` (re-entry, holdout) and `engine/journey_nodes.py` (split buckets), to be obviously
right rather than fast, so a property test can hold the engine to it.

What it covers: segment entries (the users who entered the segment at a run are given) and event entries
without a key; every re-entry policy; holdout; duration delays; branches on `performed` / `not_performed`
within `since: entry` or `last: <d>`; wait-for an event (no property filters, no key) with a timeout; splits;
sends; exits; a goal. Every transition of a run happens at the run's as_of.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from models.journeys import (
    BranchNode,
    DelayNode,
    EventEntry,
    ExitNode,
    JourneyDefinition,
    ReentryLimits,
    SegmentEntry,
    SendNode,
    SplitNode,
    WaitEvent,
    WaitForNode,
)
from models.rules import NotPerformed, Performed, Window
from tests.segment_reference import murmur3_32

Event = tuple[str, str, datetime]  # user, event name, time
Transition = tuple[str | None, str, datetime]  # from node, to node, at
Send = tuple[str, str, str, datetime]  # user, channel, template, as_of
GOAL_EXIT = "(exit)"


@dataclass
class Instance:
    user: str
    entered_at: datetime
    node: str
    arrived: datetime
    due: datetime | None = None
    active: bool = True
    exit_reason: str | None = None
    holdout: bool = False


@dataclass
class Reference:
    """One journey's instances across runs, and everything they did."""

    journey: JourneyDefinition
    instances: list[Instance] = field(default_factory=list)
    transitions: dict[str, list[Transition]] = field(default_factory=dict)
    sends: list[Send] = field(default_factory=list)

    def run(self, as_of: datetime, *, entered: list[str], events: list[Event]) -> None:
        """A run at `as_of`: entries first, then every active instance moved as far as it can go."""
        visible = [event for event in events if event[2] < as_of]
        if self.journey.accepts_entries(as_of):
            for user in self._candidates(as_of, entered, visible):
                self._enter(user, as_of)
        for instance in self.instances:
            if instance.active:
                self._advance(instance, as_of, visible)

    # --- entry -----------------------------------------------------------------------------------------------

    def _candidates(self, as_of: datetime, entered: list[str], visible: list[Event]) -> list[str]:
        entry = self.journey.entry
        if isinstance(entry, SegmentEntry):
            users = set(entered)
        else:
            assert isinstance(entry, EventEntry) and entry.key is None and entry.where is None
            users = set()
            for user, name, ts in visible:
                if name != entry.event or ts < as_of - entry.lookback:
                    continue
                mine = self._of(user)
                if any(instance.active for instance in mine):
                    continue
                left = [instance.arrived for instance in mine if not instance.active]
                if left and ts < max(left):
                    continue  # spent: it happened before the user last left
                users.add(user)
        return sorted(user for user in users if self._eligible(user, as_of))

    def _eligible(self, user: str, as_of: datetime) -> bool:
        mine = self._of(user)
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

    def _enter(self, user: str, as_of: datetime) -> None:
        held_out = murmur3_32(f"journey-holdout:{self.journey.name}:{user}".encode()) % 100 < self.journey.holdout
        instance = Instance(user, as_of, self.journey.start, as_of, holdout=held_out)
        self.instances.append(instance)
        self.transitions.setdefault(user, []).append((None, self.journey.start, as_of))
        self._arrive(instance, self.journey.start, as_of)

    def _of(self, user: str) -> list[Instance]:
        return [instance for instance in self.instances if instance.user == user]

    # --- moving ----------------------------------------------------------------------------------------------

    def _advance(self, instance: Instance, as_of: datetime, visible: list[Event]) -> None:
        goal = self.journey.goal
        if goal is not None:
            assert goal.where is None and not goal.match_key
            end = instance.entered_at + goal.within
            if self._first(instance.user, goal.event, instance.entered_at, end, visible) is not None:
                self._move(instance, GOAL_EXIT, as_of)
                instance.active, instance.exit_reason = False, "goal"
                return
        matched = None
        node = self.journey.nodes[instance.node]
        if isinstance(node, WaitForNode):
            assert isinstance(node.wait_for, WaitEvent) and node.wait_for.where is None
            assert instance.due is not None
            matched = self._first(instance.user, node.wait_for.event, instance.arrived, instance.due, visible)
        for _ in range(len(self.journey.nodes) + 2):
            node = self.journey.nodes[instance.node]
            waits = isinstance(node, DelayNode | WaitForNode)
            if waits and instance.due is not None and instance.due > as_of and matched is None:
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
                        (case.next for case in node.branch if self._holds(case.when, instance, as_of, visible)),
                        node.otherwise,
                    )
                case WaitForNode():
                    target = node.matched if matched is not None else node.timed_out
                case SplitNode():
                    target = self._arm(node, instance)
                case _:
                    raise AssertionError(f"an active instance rests at {instance.node}")
            matched = None
            self._move(instance, target, as_of)
            self._arrive(instance, target, as_of)
            if not instance.active:
                return
        raise AssertionError("the reference kept moving: the journey has an instant loop")

    def _move(self, instance: Instance, target: str, as_of: datetime) -> None:
        self.transitions.setdefault(instance.user, []).append((instance.node, target, as_of))
        instance.node, instance.arrived, instance.due = target, as_of, None

    def _arrive(self, instance: Instance, node_id: str, as_of: datetime) -> None:
        node = self.journey.nodes[node_id]
        if isinstance(node, DelayNode):
            assert isinstance(node.delay, timedelta)
            instance.due = as_of + node.delay
        elif isinstance(node, WaitForNode):
            instance.due = as_of + node.timeout
        elif isinstance(node, ExitNode):
            instance.active, instance.exit_reason = False, node.exit

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

    @staticmethod
    def _first(user: str, name: str, after: datetime, before: datetime, visible: list[Event]) -> datetime | None:
        """The first `name` event of `user` strictly after `after` and strictly before `before`."""
        times = [ts for who, what, ts in visible if who == user and what == name and after < ts < before]
        return min(times, default=None)

    def _holds(self, rule: object, instance: Instance, as_of: datetime, visible: list[Event]) -> bool:
        if isinstance(rule, Performed):
            spec, negate = rule.performed, False
            low, high = spec.bounds()
        elif isinstance(rule, NotPerformed):
            spec, negate, low, high = rule.not_performed, True, 1, None
        else:
            raise NotImplementedError(f"the reference reads no {type(rule).__name__} rule")
        assert spec.where is None
        start = _window_start(spec.within, instance, as_of)
        count = sum(1 for who, what, ts in visible if who == instance.user and what == spec.event and ts >= start)
        inside = count >= low and (high is None or count <= high)
        return inside != negate

    def exits(self) -> dict[str, list[tuple[str, str | None]]]:
        """Per user, each instance's (node, exit reason) in entry order; None while active."""
        found: dict[str, list[tuple[str, str | None]]] = {}
        for instance in sorted(self.instances, key=lambda i: (i.user, i.entered_at)):
            found.setdefault(instance.user, []).append((instance.node, instance.exit_reason))
        return found


def _window_start(window: Window | None, instance: Instance, as_of: datetime) -> datetime:
    """The start of a [start, as_of) window: since entry, or the last so long."""
    if window is None:
        return datetime.min.replace(tzinfo=as_of.tzinfo)
    assert window.closed == "left"
    if window.since == "entry":
        return instance.entered_at
    assert window.last is not None
    return as_of - window.last
