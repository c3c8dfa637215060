"""A duration type for definitions: `7d`, `36h`, `90m`, `1w`.

Definitions are written by people, so durations are short strings rather than seconds; they are parsed once
at validation, and an unknown unit is refused there rather than discovered in a run.
"""

import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"w": timedelta(weeks=1), "d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}
_PATTERN = re.compile(r"^\s*(\d+)\s*([wdhm])\s*$")


def parse_duration(value: object) -> timedelta:
    """Parse `<positive integer><unit>` with unit one of w, d, h, m."""
    if isinstance(value, timedelta):
        parsed = value
    elif isinstance(value, str) and (match := _PATTERN.match(value)):
        parsed = int(match.group(1)) * _UNITS[match.group(2)]
    else:
        raise ValueError(f"expected a duration such as '7d', '24h', '30m' or '2w', got {value!r}")
    if parsed <= timedelta(0):
        raise ValueError(f"a duration must be positive, got {value!r}")
    return parsed


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling, so that a definition's normalized form is stable."""
    minutes = int(value.total_seconds() // 60)
    for unit, size in (("w", 7 * 24 * 60), ("d", 24 * 60), ("h", 60)):
        if minutes % size == 0:
            return f"{minutes // size}{unit}"
    return f"{minutes}m"


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration)]
