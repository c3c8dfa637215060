"""The schema of the delivery policy (`definitions/delivery.yaml`): limits on marketing pressure, for all journeys.

A journey says what to send; the policy says how much any one person may receive and when: a global control
group that is never messaged, frequency caps per channel and per journey, and quiet hours in the user's time
zone. `engine/delivery_controls.py` applies it at planning.
"""

from __future__ import annotations

import re
from datetime import time
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator

from engine.channels.registry import ChannelName
from models.segments import SLUG

Channel = ChannelName  # any registered channel (`engine.channels`), built-in or from a plugin

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_clock(value: object) -> time:
    """Parse a wall-clock time written `HH:MM`, and nothing else.

    YAML 1.1 reads an unquoted `21:00` as the sexagesimal integer 1260, which pydantic would happily take as
    seconds after midnight (00:21); only a string is accepted, so that mistake is refused at validation.
    """
    if isinstance(value, time):
        return value
    if isinstance(value, str) and (match := _CLOCK.match(value)):
        return time(int(match.group(1)), int(match.group(2)))
    raise ValueError(f'expected a quoted wall-clock time such as "21:00", got {value!r}')


Clock = Annotated[time, BeforeValidator(parse_clock), PlainSerializer(lambda value: value.strftime("%H:%M"))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ControlGroup(_Strict):
    """A stable share of users who never receive a marketing message, to measure what messaging adds.

    Membership is a hash of `seed` and the user id: changing the seed draws a new group, so keep it for as long
    as results are compared.
    """

    percent: Decimal = Field(ge=0, le=100, decimal_places=2)
    seed: str = Field(min_length=1)


class Cap(_Strict):
    """At most this many messages per calendar day and per ISO week (Monday start) in the user's time zone."""

    per_day: int | None = Field(default=None, ge=0)
    per_week: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _some_limit(self) -> Cap:
        if self.per_day is None and self.per_week is None:
            raise ValueError("a cap needs per_day, per_week or both")
        return self


class QuietWindow(_Strict):
    """Local wall-clock hours in which nothing is delivered; `start` after `end` means the window spans midnight.

    `hold` keeps the message for the end of the window; `drop` skips it.
    """

    start: Clock
    end: Clock
    mode: Literal["hold", "drop"] = "hold"

    @model_validator(mode="after")
    def _not_empty(self) -> QuietWindow:
        if self.start == self.end:
            raise ValueError("start and end are equal: an empty window (leave quiet hours out instead)")
        return self


class QuietHours(QuietWindow):
    """The window for every channel, unless `channels` gives one its own (or `null`: no quiet hours for it)."""

    channels: dict[Channel, QuietWindow | None] = Field(default_factory=dict)

    def window(self, channel: Channel) -> QuietWindow | None:
        """The quiet window that applies to `channel`."""
        return self.channels.get(channel, self)


class DeliveryPolicy(_Strict):
    """Every delivery control; each part is optional, and an empty policy lets every planned message through."""

    control_group: ControlGroup | None = None
    caps: dict[Channel, Cap] = Field(default_factory=dict)
    journey_caps: dict[Annotated[str, Field(pattern=SLUG)], dict[Channel, Cap]] = Field(default_factory=dict)
    quiet_hours: QuietHours | None = None
