"""The input contract as code: the canonical schemas, the snapshot layout and the error for breaking it.

Everything a loader promises downstream code lives here, so that segments, rollups and journeys can depend on
these names and types without importing the loaders. `docs/input-contract.md` is the prose version; when the two
disagree, this file is right and the doc is a bug.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from typing import Literal

import polars as pl

UTC_TIMESTAMP = pl.Datetime("us", "UTC")

EVENTS_DIR = "events"
USERS_DIR = "users"
QUARANTINE_DIR = "quarantine"
PARTITION_PATTERN = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")

RAW_FORMATS: dict[str, Literal["parquet", "csv", "ndjson"]] = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
}
"""File suffix -> reader. Any other suffix in a snapshot is an error, never silently skipped."""

FUTURE_TOLERANCE = timedelta(hours=1)
"""How far past the end of its arrival day an event's `ts` may lie before it is quarantined as `future_ts`.

An event cannot happen after it arrived, but device clocks drift; an hour absorbs drift while still catching
the usual bug of local wall-clock time labelled as UTC, which lands up to 14 hours ahead.
"""


class SnapshotError(Exception):
    """A snapshot breaks the contract in a way no row-level quarantine can absorb.

    Raised for a missing required column, a Parquet column of the wrong type, an unknown file format, an
    unreadable file or a malformed folder layout. The message always names the file (relative to the snapshot)
    so an operator can find it. Nothing of the offending file has been written when it is raised.
    """


class Reason(StrEnum):
    """Why an event row was quarantined. Listed in the order checked: a row gets the first that applies."""

    MISSING_USER_ID = "missing_user_id"
    MISSING_EVENT = "missing_event"
    BAD_TS = "bad_ts"
    FUTURE_TS = "future_ts"
    BAD_VALUE = "bad_value"
    BAD_PROPERTIES = "bad_properties"


@dataclass(frozen=True)
class Column:
    """One column of a canonical table.

    `presence` says what a raw file must do: `required` columns must exist in every file, `optional` ones may be
    absent (they load as null or their default) and `derived` ones never come from the file.
    """

    name: str
    dtype: pl.DataType
    presence: Literal["required", "optional", "derived"]
    nullable: bool
    doc: str


EVENT_COLUMNS: tuple[Column, ...] = (
    Column(
        "user_id",
        pl.String(),
        "required",
        False,
        "Who did it. Integer ids are accepted and cast to text; surrounding whitespace is stripped.",
    ),
    Column("event", pl.String(), "required", False, "What happened, e.g. `purchase`. Stripped, never empty."),
    Column(
        "ts",
        UTC_TIMESTAMP,
        "required",
        False,
        "When it happened, in UTC. May be earlier than its partition (late data), never later than the "
        "partition day's end plus FUTURE_TOLERANCE.",
    ),
    Column("value", pl.Float64(), "optional", True, "A finite amount, e.g. a purchase's cart value."),
    Column(
        "properties",
        pl.String(),
        "optional",
        True,
        "A JSON object as compact text, keys sorted at every depth, null-valued keys dropped.",
    ),
    Column("load_date", pl.Date(), "derived", False, "The arrival-date partition the row was loaded from."),
)
EVENT_SCHEMA = pl.Schema([(c.name, c.dtype) for c in EVENT_COLUMNS])

QUARANTINE_SCHEMA = pl.Schema(
    [
        ("user_id", pl.String()),
        ("event", pl.String()),
        ("ts", pl.String()),
        ("value", pl.String()),
        ("properties", pl.String()),
        ("source_file", pl.String()),
        ("row", pl.Int64()),
        ("reason", pl.String()),
    ]
)
"""Rejected event rows: the raw values as text, where they came from (1-based record number) and why."""

USER_COLUMNS: tuple[Column, ...] = (
    Column("user_id", pl.String(), "required", False, "Joins to events.user_id. Duplicates: the last row wins."),
    Column("email", pl.String(), "optional", True, "Null when absent or not shaped like an address."),
    Column(
        "push_tokens",
        pl.List(pl.String()),
        "optional",
        False,
        "FCM registration tokens; an empty list when the user has none.",
    ),
    Column(
        "timezone",
        pl.String(),
        "optional",
        True,
        "IANA zone name. Unknown names load as null (counted as a warning); null means UTC.",
    ),
    Column("locale", pl.String(), "optional", True, "BCP 47 tag such as `pt-BR`, as given."),
    Column("country", pl.String(), "optional", True, "ISO 3166 code, as given."),
    Column(
        "email_consent",
        pl.Boolean(),
        "optional",
        False,
        "Consent must be explicit: absent or unreadable loads as false.",
    ),
    Column("push_consent", pl.Boolean(), "optional", False, "As email_consent."),
    Column("signed_up_at", UTC_TIMESTAMP, "optional", True, "When the account was created, in UTC."),
)
USER_SCHEMA = pl.Schema([(c.name, c.dtype) for c in USER_COLUMNS])
"""The standard user columns; any further columns of a users file follow them as free attributes."""


def partition_date(name: str) -> date | None:
    """The date of a `date=YYYY-MM-DD` folder name, or None when the name is not a partition."""
    match = PARTITION_PATTERN.match(name)
    if match is None:
        return None
    try:
        return date.fromisoformat(match.group(1))
    except ValueError:
        return None


def partition_name(day: date) -> str:
    """The folder name of the partition holding `day`."""
    return f"date={day.isoformat()}"
