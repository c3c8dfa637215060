"""The rule language shared by segments and journey branches.

Each condition is a one-key mapping whose key names its kind, so YAML reads like the sentence it encodes:

    all:
      - performed: {event: add_to_cart, within: {last: 7d}}
      - not_performed: {event: purchase, within: {last: 7d}}

The key is the pydantic discriminator: an unknown kind is refused with the list of known ones, and errors point
at the field inside the condition rather than at every member of a union. Everything a run could trip on later
(a bad regex, an empty window, a bucket range upside down) is refused here, at load.

Times in definitions: a *timestamp* is ISO-8601 (`2017-12-02T06:00:00Z`); one without an offset, or a bare date
(`2017-12-02`, meaning its midnight), is UTC, as in the input contract. A *moment* is either a timestamp or a
duration meaning "that long before as_of" (`before: 30d` is before as_of - 30 days).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal

import polars as pl
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PlainValidator,
    Tag,
    field_validator,
    model_validator,
)

from engine.channels.registry import ChannelName
from models.durations import Duration, format_duration, parse_duration

RULE_KINDS = (
    "all", "any", "not", "performed", "not_performed", "first_performed", "last_performed", "aggregate",
    "received", "opened", "clicked", "attribute", "random_bucket", "segment",
)  # fmt: skip


def _scalar(value: object) -> bool | int | float | str:
    if not isinstance(value, bool | int | float | str):
        raise ValueError(f"expected a string, number or boolean, got {value!r}")
    return value


Scalar = Annotated[bool | int | float | str, PlainValidator(_scalar)]


def parse_timestamp(value: object) -> datetime:
    """An aware UTC datetime from a datetime, a date (its midnight) or ISO text; naive means UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"expected a timestamp such as 2017-12-02T06:00:00Z, got {value!r}") from None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(), UTC)
    raise ValueError(f"expected a timestamp such as 2017-12-02T06:00:00Z, got {value!r}")


def parse_moment(value: object) -> timedelta | datetime:
    """A duration before as_of (`30d`) or a timestamp; text with a '-' in it can only be a timestamp."""
    if isinstance(value, date) or (isinstance(value, str) and "-" in value):
        return parse_timestamp(value)
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(f"expected a duration before as_of such as '30d' or a timestamp, got {value!r}") from None


def _format_moment(value: timedelta | datetime) -> str:
    return format_duration(value) if isinstance(value, timedelta) else value.isoformat()


def _ordered_pair(pair: tuple[float, float]) -> tuple[float, float]:
    if pair[0] > pair[1]:
        raise ValueError(f"[{pair[0]}, {pair[1]}] is empty: the first bound is above the second")
    return pair


Timestamp = Annotated[datetime, BeforeValidator(parse_timestamp), PlainSerializer(lambda value: value.isoformat())]
Moment = Annotated[timedelta | datetime, BeforeValidator(parse_moment), PlainSerializer(_format_moment)]
Range = Annotated[tuple[float, float], AfterValidator(_ordered_pair)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Span(_Strict):
    """Absolute bounds of a `between` window."""

    from_: Timestamp = Field(alias="from")
    to: Timestamp

    @model_validator(mode="after")
    def _ordered(self) -> Span:
        if self.from_ >= self.to:
            raise ValueError(f"'from' ({self.from_.isoformat()}) must be before 'to' ({self.to.isoformat()})")
        return self


class Window(_Strict):
    """A time window, always clipped to the run's `as_of` (nothing at or after as_of is visible).

    Exactly one form:
    - `last: 7d` is [as_of - 7d, as_of);
    - `between: {from: A, to: B}` is [A, B);
    - `after: signed_up_at` is [signed_up_at, as_of), or with `for: 7d` [signed_up_at, signed_up_at + 7d);
    - `after_first: purchase` is the same from the user's first `purchase` ever (before as_of): with `for: 30d`,
      "within 30 days of the first purchase";
    - `since: entry` (journeys only) is [entered_at, as_of).

    `closed` says which ends are included, as in Polars' `is_between`: `left` (the default, [start, end)),
    `right` ((start, end]), `both` or `none`. "A second purchase within 30 days after the first" is
    `{after_first: purchase, for: 30d, closed: right}`: the first purchase itself is not in it.
    """

    last: Duration | None = None
    between: Span | None = None
    after: str | None = Field(default=None, min_length=1)
    after_first: str | None = Field(default=None, min_length=1)
    for_: Duration | None = Field(default=None, alias="for")
    since: Literal["entry"] | None = None
    closed: Literal["left", "right", "both", "none"] = "left"

    @model_validator(mode="after")
    def _one_form(self) -> Window:
        forms = [self.last, self.between, self.after, self.after_first, self.since]
        if sum(form is not None for form in forms) != 1:
            raise ValueError("give exactly one of 'last', 'between', 'after', 'after_first' or 'since'")
        if self.for_ is not None and self.after is None and self.after_first is None:
            raise ValueError("'for: <duration>' goes with 'after' or 'after_first'")
        return self


class _Events(_Strict):
    """Which events a condition reads: one name, optionally narrowed by equalities on their properties.

    `where: {campaign_id: 8}` holds when the property, read as text, equals the value: a number compares as a
    number (8 matches 8, 8.0 and "8": ingest writes a key as text when files mix types), a string as text, a
    boolean as `true`/`false`. Absent, null and nested properties match nothing.
    """

    event: str = Field(min_length=1)
    where: dict[str, Scalar] | None = Field(default=None, min_length=1)

    @field_validator("where")
    @classmethod
    def _plain_keys(cls, where: dict[str, Scalar] | None) -> dict[str, Scalar] | None:
        for key in where or {}:
            if not key or any(char in key for char in "'\"\\"):
                raise ValueError(f"a property name must be non-empty without quotes or backslashes, got {key!r}")
        return where


class _CountBounds(_Strict):
    at_least: int | None = Field(default=None, ge=0)
    at_most: int | None = Field(default=None, ge=0)
    exactly: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> _CountBounds:
        if self.exactly is not None and (self.at_least is not None or self.at_most is not None):
            raise ValueError("'exactly' excludes 'at_least' and 'at_most'")
        if self.at_least is not None and self.at_most is not None and self.at_least > self.at_most:
            raise ValueError(f"at_least ({self.at_least}) is above at_most ({self.at_most})")
        return self

    def bounds(self) -> tuple[int, int | None]:
        """The inclusive count range this condition accepts; with no bound given, 'at least once'."""
        if self.exactly is not None:
            return self.exactly, self.exactly
        if self.at_least is None and self.at_most is None:
            return 1, None
        return self.at_least or 0, self.at_most


class EventCount(_CountBounds, _Events):
    """How many times a user performed `event` in `within` (all history before as_of when omitted)."""

    within: Window | None = None


class NotPerformedSpec(_Events):
    within: Window | None = None


class EventTimeSpec(_Events):
    """When the user's first (or last) `event` before as_of happened: `before` / `after` a moment, or `within`.

    `after` includes its moment and `before` excludes it, like a window's start and end. A user who never
    performed the event does not match (wrap it in `not` for "never, or not recently").
    """

    before: Moment | None = None
    after: Moment | None = None
    within: Window | None = None

    @model_validator(mode="after")
    def _one_test(self) -> EventTimeSpec:
        if (self.within is None) == (self.before is None and self.after is None):
            raise ValueError("give 'within', or 'before' and/or 'after'")
        return self


class _Comparisons(_Strict):
    """Numeric comparisons that must all hold; `between: [a, b]` is inclusive at both ends."""

    lt: float | None = None
    lte: float | None = None
    gt: float | None = None
    gte: float | None = None
    between: Range | None = None


class AggregateSpec(_Comparisons, _Events):
    """A statistic of the `value` of `event` in `within`, compared: "spent 100 or more in the last 30 days".

    Events without a value are left out. The sum of no values is 0; the avg, min and max of no values are
    missing, and a comparison with a missing value does not hold.
    """

    fn: Literal["sum", "avg", "min", "max"]
    within: Window | None = None

    @model_validator(mode="after")
    def _compared(self) -> AggregateSpec:
        if all(getattr(self, name) is None for name in ("lt", "lte", "gt", "gte", "between")):
            raise ValueError("give at least one of lt, lte, gt, gte or between")
        return self


class EngagementSpec(_CountBounds):
    """How many messages of a journey and/or template the user received, opened or clicked in `within`."""

    journey: str | None = Field(default=None, min_length=1)
    template: str | None = Field(default=None, min_length=1)
    channel: ChannelName | None = None
    within: Window | None = None

    @model_validator(mode="after")
    def _which_messages(self) -> EngagementSpec:
        if self.journey is None and self.template is None:
            raise ValueError("give 'journey', 'template' or both")
        return self


class RandomBucketSpec(_Strict):
    """Users whose bucket for `seed` is in [from, to): a stable split of 100 buckets, e.g. a 20% holdout.

    The bucket is the MurmurHash3 (x86, 32-bit, seed 0) of the UTF-8 text `<seed>:<user_id>`, unsigned, modulo
    100: the same in every process and version, and reproducible elsewhere (`mmh3.hash(key, signed=False)`).
    A new seed reshuffles everyone; the same seed keeps a user in the same bucket forever.
    """

    seed: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    from_: int = Field(alias="from", ge=0, le=99)
    to: int = Field(ge=1, le=100)

    @model_validator(mode="after")
    def _ordered(self) -> RandomBucketSpec:
        if self.from_ >= self.to:
            raise ValueError(f"'from' ({self.from_}) must be below 'to' ({self.to})")
        return self


class AttributeSpec(_Strict):
    """A test on one user attribute; exactly one operator.

    `older_than` / `newer_than` compare a timestamp attribute with as_of ("signed up more than 14 days ago");
    `before` / `after` with a moment (an absolute timestamp, or a duration before as_of). `contains` is a
    substring test on text and a membership test on a list; `matches` is a regular expression search (anchor
    it with ^...$ for a whole match) in the dialect of Polars, which runs it, so it is checked with Polars.
    """

    name: str = Field(min_length=1)
    equals: Any = None
    not_equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    not_in: list[Any] | None = None
    lt: float | None = None
    lte: float | None = None
    gt: float | None = None
    gte: float | None = None
    between: Range | None = None
    exists: bool | None = None
    contains: Scalar | None = None
    matches: str | None = None
    older_than: Duration | None = None
    newer_than: Duration | None = None
    before: Moment | None = None
    after: Moment | None = None

    @field_validator("matches")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                pl.select(pl.lit("").str.contains(pattern))
            except pl.exceptions.PolarsError as error:
                lines = str(error).splitlines()
                reason = next((line.removeprefix("error: ") for line in lines if line.startswith("error: ")), lines[0])
                raise ValueError(f"not a valid regular expression: {reason}") from None
        return pattern

    @model_validator(mode="after")
    def _one_operator(self) -> AttributeSpec:
        given = [name for name in self.operators() if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one operator of {', '.join(self.operators())}; got {given or 'none'}")
        return self

    @staticmethod
    def operators() -> tuple[str, ...]:
        return (
            "equals", "not_equals", "in_", "not_in", "lt", "lte", "gt", "gte", "between", "exists", "contains",
            "matches", "older_than", "newer_than", "before", "after",
        )  # fmt: skip

    def operator(self) -> tuple[str, Any]:
        name = next(name for name in self.operators() if getattr(self, name) is not None)
        return name, getattr(self, name)


class All(_Strict):
    all: list[Rule] = Field(min_length=1)


class AnyOf(_Strict):
    any: list[Rule] = Field(min_length=1)


class Not(_Strict):
    not_: Rule = Field(alias="not")


class Performed(_Strict):
    performed: EventCount


class NotPerformed(_Strict):
    not_performed: NotPerformedSpec


class FirstPerformed(_Strict):
    first_performed: EventTimeSpec


class LastPerformed(_Strict):
    last_performed: EventTimeSpec


class Aggregate(_Strict):
    aggregate: AggregateSpec


class Received(_Strict):
    received: EngagementSpec


class Opened(_Strict):
    opened: EngagementSpec


class Clicked(_Strict):
    clicked: EngagementSpec


class Attribute(_Strict):
    attribute: AttributeSpec


class RandomBucket(_Strict):
    random_bucket: RandomBucketSpec


class SegmentRef(_Strict):
    segment: str = Field(min_length=1)


def _rule_kind(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        return str(next(iter(value)))
    if isinstance(value, BaseModel):
        return next(iter(value.model_dump(by_alias=True, exclude_none=True)), None)
    return None


Rule = Annotated[
    Annotated[All, Tag("all")]
    | Annotated[AnyOf, Tag("any")]
    | Annotated[Not, Tag("not")]
    | Annotated[Performed, Tag("performed")]
    | Annotated[NotPerformed, Tag("not_performed")]
    | Annotated[FirstPerformed, Tag("first_performed")]
    | Annotated[LastPerformed, Tag("last_performed")]
    | Annotated[Aggregate, Tag("aggregate")]
    | Annotated[Received, Tag("received")]
    | Annotated[Opened, Tag("opened")]
    | Annotated[Clicked, Tag("clicked")]
    | Annotated[Attribute, Tag("attribute")]
    | Annotated[RandomBucket, Tag("random_bucket")]
    | Annotated[SegmentRef, Tag("segment")],
    Discriminator(
        _rule_kind,
        custom_error_type="rule_kind",
        custom_error_message=f"a condition is a mapping with one key, one of: {', '.join(RULE_KINDS)}",
    ),
]

for _model in (All, AnyOf, Not):
    _model.model_rebuild()
