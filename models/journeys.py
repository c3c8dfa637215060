"""The schema of a journey definition file (`definitions/journeys/*.yaml`).

A journey is an entry, some settings, and a graph of named nodes. Each node is a mapping whose type key says
what it does; all but exits name the node(s) that follow:

    entry:      {segment: S} | {event: E, where: {...}, key: cart_id, lookback: 1d} | {broadcast: S, at: T}
                (+ reentry: never | after_exit | {every: 7d, times: 3})
    delay:      1d | {until_local_time: "09:00"} | {until_attribute: renews_at, offset: -3d}     + next
    branch:     [{when: <rule>, next: N}, ...] + otherwise
    wait_for:   {event: E, where: {...}, match_key: true} | {segment: S}  + timeout, matched, timed_out
    split:      [{arm: A, weight: 50, next: N}, ...]
    send:       {channel: email|push, template: T, transactional: false}                        + next
                (or variants: [{variant: control, template: T, weight: 1}, ...] instead of template,
                 + allocation: fixed | thompson, min_share: 0.05, promotion: {min_users_per_arm: 1000, ...})
    exit:       <reason>

Settings: `goal` (a conversion event within an attribution window since entry), `exit_when` (rules checked
every run), `holdout` (percent of users who enter but get no message), `starts_at` / `ends_at` (when entries
are accepted), `status`, `priority`. Graph checks (targets exist, every node reached, no loop that could spin
within one run) run here, so a broken journey is refused before any run uses it.
"""

from __future__ import annotations

import re
from datetime import time, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    field_validator,
    model_validator,
)

from engine.channels.registry import ChannelName
from models.durations import Duration, format_duration, parse_duration
from models.rules import Rule, Scalar, Timestamp
from models.segments import SLUG

NODE_KINDS = ("delay", "branch", "wait_for", "split", "send", "exit")
ENTRY_KINDS = ("segment", "event", "broadcast")
RESERVED_EXIT_REASONS = ("goal", "version_removed_node")
"""Exit reasons the engine records itself: a goal met, and an instance whose node a new version removed."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _parse_signed(value: object) -> timedelta:
    """A duration that may be negative (`-3d`) or zero (`0d`), for offsets from a date."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\s*0+\s*[wdhm]\s*", value):
        return timedelta(0)
    if isinstance(value, str) and value.strip().startswith(("-", "+")):
        sign = -1 if value.strip().startswith("-") else 1
        return sign * parse_duration(value.strip()[1:])
    return parse_duration(value)


def _format_signed(value: timedelta) -> str:
    if value == timedelta(0):
        return "0m"
    return f"-{format_duration(-value)}" if value < timedelta(0) else format_duration(value)


def _parse_clock(value: object) -> time:
    """A local time of day written `HH:MM`; YAML reads an unquoted `9:30` as a number, so quoting is required."""
    if isinstance(value, time):
        return value
    if isinstance(value, str) and (match := re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", value)):
        hour, minute = int(match.group(1)), int(match.group(2))
        if hour < 24 and minute < 60:
            return time(hour, minute)
    hint = " (quote it: YAML reads an unquoted 9:30 as a number)" if isinstance(value, int) else ""
    raise ValueError(f"expected a time of day such as '09:00'{hint}, got {value!r}")


SignedDuration = Annotated[timedelta, BeforeValidator(_parse_signed), PlainSerializer(_format_signed)]
Clock = Annotated[time, BeforeValidator(_parse_clock), PlainSerializer(lambda value: value.strftime("%H:%M"))]


def _plain_property(name: str) -> str:
    if not name or any(char in name for char in "'\"\\"):
        raise ValueError(f"a property name must be non-empty without quotes or backslashes, got {name!r}")
    return name


class EventMatch(_Strict):
    """Events of one name, optionally narrowed by property equalities, read as in the rule language's `where`."""

    event: str = Field(min_length=1)
    where: dict[str, Scalar] | None = Field(default=None, min_length=1)

    @field_validator("where")
    @classmethod
    def _plain_keys(cls, where: dict[str, Scalar] | None) -> dict[str, Scalar] | None:
        for key in where or {}:
            _plain_property(key)
        return where


# --- entry ---------------------------------------------------------------------------------------------------


class ReentryLimits(_Strict):
    """Re-entry after exit, limited: `every` is the least time between two entries, `times` the most entries."""

    every: Duration | None = None
    times: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _some_limit(self) -> ReentryLimits:
        if self.every is None and self.times is None:
            raise ValueError("give 'every: <duration>', 'times: <count>' or both")
        return self


Reentry = Literal["never", "after_exit"] | ReentryLimits


class _EntryBase(_Strict):
    """Re-entry is counted per entry subject: the user, or the user and key for keyed event entries. Whatever
    the policy, a subject never has two active instances at once."""

    reentry: Reentry = "after_exit"


class SegmentEntry(_EntryBase):
    """Users enter when they enter `segment` (were not in it at the previous run, are in it now)."""

    segment: str = Field(pattern=SLUG)


class EventEntry(_EntryBase, EventMatch):
    """Users enter when they perform `event` (seen in the last `lookback` before the run).

    With `key` (a property of the event, e.g. `cart_id`) each key gets its own instance: two carts, two
    instances. Events without the key property do not enter. An event that happened while its subject was in
    the journey, or that already started an instance, never starts another one, so a lookback longer than the
    time between runs (to catch late events) enters nobody twice.
    """

    key: str | None = None
    lookback: Duration = timedelta(days=1)

    @field_validator("key")
    @classmethod
    def _plain_key(cls, key: str | None) -> str | None:
        return None if key is None else _plain_property(key)


class BroadcastEntry(_EntryBase):
    """Everyone in `broadcast` (a segment) enters at the first run at or after `at`, once.

    The broadcast has happened once an instance of the journey entered at or after `at`; while the segment is
    empty it stays pending.
    """

    broadcast: str = Field(pattern=SLUG)
    at: Timestamp


def _entry_kind(value: Any) -> str | None:
    keys = value.keys() if isinstance(value, dict) else type(value).model_fields.keys()
    found = [kind for kind in ENTRY_KINDS if kind in keys]
    return f"{found[0]} entry" if len(found) == 1 else None


Entry = Annotated[
    Annotated[SegmentEntry, Tag("segment entry")]
    | Annotated[EventEntry, Tag("event entry")]
    | Annotated[BroadcastEntry, Tag("broadcast entry")],
    Discriminator(
        _entry_kind,
        custom_error_type="entry_kind",
        custom_error_message=f"an entry needs exactly one of the keys: {', '.join(ENTRY_KINDS)}",
    ),
]


# --- nodes ---------------------------------------------------------------------------------------------------


class LocalTimeDelay(_Strict):
    """Until the next time the user's clock shows this time (their `timezone` attribute, UTC when missing or unknown),
    strictly after arriving: arriving at 09:00 sharp waits a day. DST-correct: on a day the clock skips the
    time it means the end of the skip; on a day it shows it twice, the first showing."""

    until_local_time: Clock


class AttributeDelay(_Strict):
    """Until a date attribute plus `offset` (`-3d`: three days before). A date already passed (or equal to the
    arrival instant), or a missing attribute, does not wait: the instance moves on in the same run (so this delay
    may take no time)."""

    until_attribute: str = Field(min_length=1)
    offset: SignedDuration = timedelta(0)


def _delay_kind(value: Any) -> str | None:
    if isinstance(value, dict | LocalTimeDelay | AttributeDelay):
        keys = value.keys() if isinstance(value, dict) else type(value).model_fields.keys()
        return next((kind for kind in ("until_local_time", "until_attribute") if kind in keys), None)
    return "duration"


DelaySpec = Annotated[
    Annotated[Duration, Tag("duration")]
    | Annotated[LocalTimeDelay, Tag("until_local_time")]
    | Annotated[AttributeDelay, Tag("until_attribute")],
    Discriminator(
        _delay_kind,
        custom_error_type="delay_kind",
        custom_error_message="a delay is a duration such as 1d, {until_local_time: 'HH:MM'} or {until_attribute: A}",
    ),
]


class DelayNode(_Strict):
    delay: DelaySpec
    next: str

    def takes_time(self) -> bool:
        return not isinstance(self.delay, AttributeDelay)


class BranchCase(_Strict):
    when: Rule
    next: str


class BranchNode(_Strict):
    """The first case whose rule holds at the run's as_of wins; `otherwise` takes the rest."""

    branch: list[BranchCase] = Field(min_length=1)
    otherwise: str


class WaitEvent(EventMatch):
    """`match_key: true` only counts events whose entry-key property (e.g. `cart_id`) equals the instance's key."""

    match_key: bool = False


class WaitSegment(_Strict):
    segment: str = Field(pattern=SLUG)


def _wait_kind(value: Any) -> str | None:
    keys = value.keys() if isinstance(value, dict) else type(value).model_fields.keys()
    found = [kind for kind in ("event", "segment") if kind in keys]
    return f"{found[0]} wait" if len(found) == 1 else None


WaitSpec = Annotated[
    Annotated[WaitEvent, Tag("event wait")] | Annotated[WaitSegment, Tag("segment wait")],
    Discriminator(
        _wait_kind,
        custom_error_type="wait_kind",
        custom_error_message="wait for exactly one of: an event ({event: E}) or a segment ({segment: S})",
    ),
]


class WaitForNode(_Strict):
    """Wait for an event (after arriving here, before the timeout) or for being in a segment, at most `timeout`.

    An event counts when it happened strictly after the instance arrived and before arrival + timeout; a
    segment when the user is in it at a run after the arrival run, up to the one at the deadline. Either way
    the instance leaves by `matched`, else by `timed_out` at the first run at or after the deadline.
    """

    wait_for: WaitSpec
    timeout: Duration
    matched: str
    timed_out: str


class SplitArm(_Strict):
    arm: str | None = Field(default=None, pattern=SLUG, description="the arm's name; the next node's by default")
    weight: int = Field(gt=0)
    next: str

    @property
    def label(self) -> str:
        return self.arm or self.next


class SplitNode(_Strict):
    """A random split (an experiment): each user takes an arm with probability weight / total, by a hash of
    user, journey and node, so the same user always takes the same arm, in every run and on re-entry."""

    split: list[SplitArm] = Field(min_length=2)

    @field_validator("split")
    @classmethod
    def _distinct_arms(cls, arms: list[SplitArm]) -> list[SplitArm]:
        labels = [arm.label for arm in arms]
        if len(set(labels)) != len(labels):
            raise ValueError(f"arm names must differ (an arm is named after its next node by default): {labels}")
        return arms


MAX_VARIANTS = 16
"""Variants of one send, the control included: beyond this, arms get too small to tell apart."""


class Variant(_Strict):
    variant: str = Field(pattern=SLUG, description="the variant's name, recorded on each of its messages")
    template: str = Field(pattern=SLUG)
    weight: int = Field(default=1, gt=0)


class PromotionSettings(_Strict):
    """The thresholds of the rule that declares a thompson send's winner (`engine.stats.thompson`: all must hold)."""

    min_chance_to_be_best: float = Field(default=0.95, gt=0.5, lt=1)
    max_expected_loss: float = Field(default=0.001, ge=0, description="in conversion rate: 0.001 is 0.1 point")
    min_users_per_arm: int = Field(default=1000, ge=1)


class SendSpec(_Strict):
    """`transactional` marks a message the user asked for (a receipt, a reset link): delivery controls meant
    for marketing (frequency caps, quiet hours) do not hold it back.

    `variants` instead of `template` makes the send an experiment: each user gets one variant, with
    probability weight / total, by the same sticky hash of user, journey and node as a split. The first variant
    is the control. The variant is recorded on every message at planning, skipped ones included, so that an
    analysis compares users as assigned (intent to treat), not only those the controls let through.

    `allocation: thompson` (variants only, in a journey with a goal) makes the experiment adaptive: before each
    run, the share of users never assigned at this node that each variant gets moves towards the variant likelier
    to convert best (Thompson sampling on the goal; `engine.allocation` holds the rules). Every variant keeps at
    least `min_share` of them, so one that started unlucky can still recover; before any result is in, the
    shares follow the weights. A user keeps the first variant assigned, whatever the shares do later. When
    `promotion`'s thresholds all hold, the experiment's report says "promote <variant>"; nothing changes by
    itself: the operator makes the winner this send's `template` here, which ends the experiment.
    """

    channel: ChannelName
    template: str | None = Field(default=None, pattern=SLUG)
    variants: list[Variant] | None = Field(default=None, min_length=2, max_length=MAX_VARIANTS)
    allocation: Literal["fixed", "thompson"] = "fixed"
    min_share: float = Field(default=0.05, gt=0, le=0.5, description="thompson: each variant's least share")
    promotion: PromotionSettings = Field(default_factory=PromotionSettings)
    transactional: bool = False

    @model_validator(mode="after")
    def _one_way_to_choose_a_template(self) -> SendSpec:
        if (self.template is None) == (self.variants is None):
            raise ValueError("a send names either one `template` or a list of `variants`, not both or neither")
        names = [variant.variant for variant in self.variants or []]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must differ: {names}")
        return self

    @model_validator(mode="after")
    def _thompson_settings(self) -> SendSpec:
        if self.allocation == "fixed":
            if stray := sorted({"min_share", "promotion"} & self.model_fields_set):
                raise ValueError(f"{' and '.join(stray)} only apply to `allocation: thompson`")
            return self
        if self.variants is None:
            raise ValueError("`allocation: thompson` shares traffic between `variants`: list them")
        if self.min_share * len(self.variants) >= 1:
            raise ValueError(
                f"a min_share of {self.min_share} for {len(self.variants)} variants leaves nothing to adapt"
            )
        return self

    @property
    def templates(self) -> list[str]:
        """Every template this send may use, in definition order, each once."""
        found = [self.template] if self.template else [variant.template for variant in self.variants or []]
        return list(dict.fromkeys(found))

    @property
    def starting_shares(self) -> dict[str, float]:
        """A thompson send's shares before any result: min_share each, the rest by weight."""
        variants = self.variants or []
        total = sum(variant.weight for variant in variants)
        rest = 1.0 - self.min_share * len(variants)
        return {variant.variant: self.min_share + rest * variant.weight / total for variant in variants}


class SendNode(_Strict):
    send: SendSpec
    next: str


class ExitNode(_Strict):
    exit: str = Field(pattern=SLUG, description="the reason recorded on the instance, e.g. converted")


AnyNode = DelayNode | BranchNode | WaitForNode | SplitNode | SendNode | ExitNode


def _node_kind(value: Any) -> str | None:
    keys = value.keys() if isinstance(value, dict) else type(value).model_fields.keys()
    return next((f"{kind} node" for kind in NODE_KINDS if kind in keys), None)


Node = Annotated[
    Annotated[DelayNode, Tag("delay node")]
    | Annotated[BranchNode, Tag("branch node")]
    | Annotated[WaitForNode, Tag("wait_for node")]
    | Annotated[SplitNode, Tag("split node")]
    | Annotated[SendNode, Tag("send node")]
    | Annotated[ExitNode, Tag("exit node")],
    Discriminator(
        _node_kind,
        custom_error_type="node_kind",
        custom_error_message=f"a node needs one of the keys: {', '.join(NODE_KINDS)}",
    ),
]


def successors(node: AnyNode) -> list[str]:
    """The node ids a node can lead to, in the order its definition gives them."""
    match node:
        case BranchNode():
            return [case.next for case in node.branch] + [node.otherwise]
        case WaitForNode():
            return [node.matched, node.timed_out]
        case SplitNode():
            return [arm.next for arm in node.split]
        case ExitNode():
            return []
        case _:
            return [node.next]


def takes_time(node: AnyNode) -> bool:
    """Whether an instance arriving at the node always stays there until a later run."""
    return isinstance(node, WaitForNode) or (isinstance(node, DelayNode) and node.takes_time())


# --- settings ------------------------------------------------------------------------------------------------


class Goal(EventMatch):
    """The conversion: `event` within `within` of entry. Checked at every run from any node; when met the
    instance exits with reason `goal` and the event's time is recorded. `match_key` as in `wait_for`."""

    within: Duration
    match_key: bool = False


class ExitCriterion(_Strict):
    """Checked at every run, before the instance moves: when `when` holds, it exits with `reason`."""

    when: Rule
    reason: str = Field(pattern=SLUG)


class JourneyDefinition(_Strict):
    """A journey: entry, settings, a start node and the node graph.

    Status: `draft` never runs live (simulate it); `active` runs; `paused` accepts no entries and its instances
    stay where they are until it is active again (elapsed waits then move at once); `archived` does nothing.
    """

    name: str = Field(pattern=SLUG)
    description: str = ""
    status: Literal["draft", "active", "paused", "archived"] = "active"
    priority: int = Field(
        default=0, description="when journeys want the same user and channel in one run, the highest wins"
    )
    entry: Entry
    goal: Goal | None = None
    exit_when: list[ExitCriterion] = Field(default_factory=list)
    holdout: int = Field(default=0, ge=0, le=99, description="percent of entrants who are sent nothing")
    starts_at: Timestamp | None = Field(default=None, description="entries are accepted from this instant")
    ends_at: Timestamp | None = Field(default=None, description="and until this one; in-flight instances finish")
    start: str
    nodes: dict[str, Node] = Field(min_length=1)

    @model_validator(mode="after")
    def _graph(self) -> JourneyDefinition:
        for node_id in self.nodes:
            if not node_id.replace("_", "a").isalnum() or not node_id[0].isalpha():
                raise ValueError(f"node id {node_id!r} must be letters, digits and underscores")
        targets = {"start": [self.start]} | {node_id: successors(node) for node_id, node in self.nodes.items()}
        for source, nexts in targets.items():
            for target in nexts:
                if target not in self.nodes:
                    raise ValueError(f"node {source!r} leads to {target!r}, which is not a node of this journey")
        unreachable = set(self.nodes) - _reachable(self.start, targets)
        if unreachable:
            raise ValueError(f"nodes never reached from start: {', '.join(sorted(unreachable))}")
        if loop := _instant_loop(self):
            raise ValueError(f"nodes {' -> '.join(loop)} form a loop in which nothing takes time")
        return self

    @model_validator(mode="after")
    def _settings(self) -> JourneyDefinition:
        if self.starts_at is not None and self.ends_at is not None and self.starts_at >= self.ends_at:
            raise ValueError("starts_at must be before ends_at")
        if isinstance(self.entry, BroadcastEntry) and not self.accepts_entries(self.entry.at):
            raise ValueError("the broadcast time is outside starts_at .. ends_at")
        keyed = isinstance(self.entry, EventEntry) and self.entry.key is not None
        matching = [f"node {node_id!r}" for node_id, node in self.nodes.items() if _matches_key(node)]
        if self.goal is not None and self.goal.match_key:
            matching.append("the goal")
        if matching and not keyed:
            raise ValueError(f"match_key needs an event entry with a key: {', '.join(matching)}")
        reserved = [node.exit for node in self.nodes.values() if isinstance(node, ExitNode)]
        reserved += [criterion.reason for criterion in self.exit_when]
        if clash := sorted(set(reserved) & set(RESERVED_EXIT_REASONS)):
            raise ValueError(f"exit reasons {clash} are recorded by the engine itself: choose another name")
        adaptive = [
            f"node {node_id!r}"
            for node_id, node in self.nodes.items()
            if isinstance(node, SendNode) and node.send.allocation == "thompson"
        ]
        if adaptive and self.goal is None:
            raise ValueError(f"allocation: thompson adapts to the journey's goal: add one ({', '.join(adaptive)})")
        return self

    def accepts_entries(self, as_of: Any) -> bool:
        """Whether a run at `as_of` may enter users (status aside): inside [starts_at, ends_at)."""
        return (self.starts_at is None or as_of >= self.starts_at) and (self.ends_at is None or as_of < self.ends_at)

    @property
    def entry_key(self) -> str | None:
        """The event property that keys instances, if any."""
        return self.entry.key if isinstance(self.entry, EventEntry) else None


def _matches_key(node: AnyNode) -> bool:
    return isinstance(node, WaitForNode) and isinstance(node.wait_for, WaitEvent) and node.wait_for.match_key


def _reachable(start: str, targets: dict[str, list[str]]) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        node_id = stack.pop()
        if node_id not in seen:
            seen.add(node_id)
            stack.extend(targets.get(node_id, []))
    return seen


def _instant_loop(journey: JourneyDefinition) -> list[str] | None:
    """A cycle through nodes that may take no time would never settle within a run: find one if it exists.

    Durations, local-time delays and wait-fors always hold an instance until a later run; a delay until a date
    attribute may not (the date may have passed), so it counts as instant here.
    """
    instant = {node_id: successors(node) for node_id, node in journey.nodes.items() if not takes_time(node)}

    def visit(node_id: str, path: list[str]) -> list[str] | None:
        if node_id in path:
            return [*path[path.index(node_id) :], node_id]
        for target in instant.get(node_id, []):
            if target in instant and (loop := visit(target, [*path, node_id])):
                return loop
        return None

    return next((loop for node_id in instant if (loop := visit(node_id, []))), None)
