"""The rule language shared by segments and journey branches.

Each condition is a one-key mapping whose key names its kind, so YAML reads like the sentence it encodes:

    all:
      - performed: {event: add_to_cart, within: {last: 7d}}
      - not_performed: {event: purchase, within: {last: 7d}}

The key is the pydantic discriminator: an unknown kind is refused with the list of known ones, and errors point
at the field inside the condition rather than at every member of a union.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from models.durations import Duration

RULE_KINDS = ("all", "any", "not", "performed", "not_performed", "attribute", "segment")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Window(_Strict):
    """A time window ending at the run's `as_of` (or, for `after`, a per-user window).

    Exactly one form: `last: 7d` is [as_of - 7d, as_of); `after: signed_up_at` with `for: 7d` is
    [signed_up_at, signed_up_at + 7d) clipped to as_of; `since: entry` (journeys only) is [entered_at, as_of).
    """

    last: Duration | None = None
    after: str | None = None
    for_: Duration | None = Field(default=None, alias="for")
    since: Literal["entry"] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Window:
        forms = [self.last is not None, self.after is not None, self.since is not None]
        if sum(forms) != 1:
            raise ValueError("give exactly one of 'last', 'after' (with 'for') or 'since'")
        if (self.after is None) != (self.for_ is None):
            raise ValueError("'after: <attribute>' and 'for: <duration>' go together")
        return self


class EventCount(_Strict):
    """How many times a user performed `event` in `within` (all history before as_of when omitted)."""

    event: str = Field(min_length=1)
    within: Window | None = None
    at_least: int | None = Field(default=None, ge=0)
    at_most: int | None = Field(default=None, ge=0)
    exactly: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> EventCount:
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


class NotPerformedSpec(_Strict):
    event: str = Field(min_length=1)
    within: Window | None = None


class AttributeSpec(_Strict):
    """A test on one user attribute; exactly one operator.

    `older_than` / `newer_than` compare a timestamp attribute with as_of ("signed up more than 14 days ago").
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
    exists: bool | None = None
    older_than: Duration | None = None
    newer_than: Duration | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> AttributeSpec:
        given = [name for name in self.operators() if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one operator of {', '.join(self.operators())}; got {given or 'none'}")
        return self

    @staticmethod
    def operators() -> tuple[str, ...]:
        return (
            "equals", "not_equals", "in_", "not_in", "lt", "lte", "gt", "gte",
            "exists", "older_than", "newer_than",
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


class Attribute(_Strict):
    attribute: AttributeSpec


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
    | Annotated[Attribute, Tag("attribute")]
    | Annotated[SegmentRef, Tag("segment")],
    Discriminator(
        _rule_kind,
        custom_error_type="rule_kind",
        custom_error_message=f"a condition is a mapping with one key, one of: {', '.join(RULE_KINDS)}",
    ),
]

for _model in (All, AnyOf, Not):
    _model.model_rebuild()
