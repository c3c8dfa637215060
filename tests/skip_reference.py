"""What the outbox should record for each message the journeys asked for, computed from the raw inputs alone.

A plain-Python reading of the spec in `engine/delivery_controls.py` and `engine/outbox.py`, one message at a
time: the users snapshot file gives addresses, consents, tokens and time zones; the suppression list gives dead
addresses; the policy YAML gives the controls. Earlier decisions are the reference's own: it keeps the messages
it let through and counts them against later caps, so a disagreement in one run is not hidden by reading the
engine's history. It shares no code with the engine: local days and weeks come from `zoneinfo`, quiet hours end
where a minute-by-minute walk of the local clock leaves the window (exact for runs on a whole minute, since time
zone offsets are whole minutes).
"""

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import yaml

CAP_SCOPES = (("frequency_cap", "day"), ("frequency_cap", "week"), ("journey_cap", "day"), ("journey_cap", "week"))
DEAD_ADDRESS = {"email": "suppressed", "push": "unregistered"}  # the skip reason of a suppressed address


@dataclass(frozen=True)
class Wanted:
    """A message a journey asked for: the one input shared with the engine."""

    user_id: str
    journey: str
    node: str
    instance_id: str
    channel: str
    transactional: bool
    priority: int


@dataclass(frozen=True)
class Row:
    """One outbox row's outcome: `planned` (with `not_before` when held) or `skipped` with its reason."""

    channel: str
    journey: str
    status: str
    reason: str | None
    not_before: datetime | None


@dataclass(frozen=True)
class Contact:
    email: str | None
    email_consent: bool
    tokens: tuple[str, ...]
    push_consent: bool
    zone: ZoneInfo


@dataclass(frozen=True)
class Delivered:
    """A marketing message let through, counted by later caps on the local day it reaches the user."""

    user_id: str
    channel: str
    journey: str
    at: datetime


def read_contacts(users_file: Path) -> dict[str, Contact]:
    """Each user's contact details from a raw users Parquet file; a blank email or time zone counts as none."""
    contacts = {}
    for row in pl.read_parquet(users_file).iter_rows(named=True):
        email = (row["email"] or "").strip() or None
        zone = (row["timezone"] or "").strip() or "UTC"
        contacts[row["user_id"]] = Contact(
            email=email,
            email_consent=bool(row["email_consent"]),
            tokens=tuple(dict.fromkeys(token for token in row["push_tokens"] or [] if token.strip())),
            push_consent=bool(row["push_consent"]),
            zone=ZoneInfo(zone),
        )
    return contacts


class Reference:
    """Plans runs in order, remembering what it let through."""

    def __init__(self, users_file: Path, policy_file: Path) -> None:
        self.contacts = read_contacts(users_file)
        self.policy: dict[str, Any] = yaml.safe_load(policy_file.read_text()) or {}
        self.delivered: list[Delivered] = []

    def plan(self, as_of: datetime, wanted: Iterable[Wanted], suppressions: Iterable[tuple[str, str]]) -> list[Row]:
        """The outbox rows of one run; `suppressions` are (channel, address) pairs."""
        dead = {(channel, address.lower() if channel == "email" else address) for channel, address in suppressions}
        decisions: dict[Wanted, tuple[str | None, datetime | None]] = {}
        contending: dict[tuple[str, str], list[tuple[Wanted, datetime | None]]] = defaultdict(list)
        rows_of = {message: self._planning_reasons(message, dead) for message in wanted}
        for message, reasons in rows_of.items():
            if message.transactional or None not in reasons:
                continue
            reason, held_until = self._before_arbitration(message, as_of)
            if reason is None:
                contending[message.user_id, message.channel].append((message, held_until))
            decisions[message] = (reason, None)
        for group in contending.values():
            decisions |= self._arbitrate(group, as_of)
        for message, (reason, held_until) in decisions.items():
            if reason is None:
                self.delivered.append(Delivered(message.user_id, message.channel, message.journey, held_until or as_of))
        return [
            self._row(message, planning_reason, decisions.get(message, (None, None)))
            for message, reasons in rows_of.items()
            for planning_reason in reasons
        ]

    def _planning_reasons(self, message: Wanted, dead: set[tuple[str, str]]) -> list[str | None]:
        """The skip reason at planning (None: none) of each outbox row: one per email, one per distinct token."""
        contact = self.contacts.get(message.user_id)
        if message.channel == "email":
            if contact is None or contact.email is None:
                return ["no_email"]
            return [_address_reason("email", contact.email, contact.email_consent, dead)]
        if contact is None or not contact.tokens:
            return ["no_push_token"]
        return [_address_reason("push", token, contact.push_consent, dead) for token in contact.tokens]

    def _before_arbitration(self, message: Wanted, as_of: datetime) -> tuple[str | None, datetime | None]:
        """Control group, then quiet hours: the skip reason, else when a held message may go (None: at once)."""
        group = self.policy.get("control_group")
        if group and in_holdout(message.user_id, seed=str(group["seed"]), percent=Decimal(str(group["percent"]))):
            return "control_group", None
        window = quiet_window(self.policy.get("quiet_hours"), message.channel)
        zone = self._zone(message.user_id)
        if window is None or not is_quiet(as_of.astimezone(zone).time(), window):
            return None, None
        if window.get("mode", "hold") == "drop":
            return "quiet_hours", None
        moment = as_of
        while is_quiet(moment.astimezone(zone).time(), window):
            moment += timedelta(minutes=1)
        return None, moment

    def _arbitrate(
        self, group: list[tuple[Wanted, datetime | None]], as_of: datetime
    ) -> dict[Wanted, tuple[str | None, datetime | None]]:
        """One user and channel: the first message, by priority, within every cap is kept; those before it are
        capped, those after it lose to it."""
        ranked = sorted(group, key=lambda item: (-item[0].priority, item[0].journey, item[0].node, item[0].instance_id))
        decisions: dict[Wanted, tuple[str | None, datetime | None]] = {}
        kept = False
        for message, held_until in ranked:
            if kept:
                decisions[message] = ("lower_priority", None)
                continue
            cap = self._first_cap(message, held_until or as_of)
            decisions[message] = (cap, held_until)
            kept = cap is None
        return decisions

    def _first_cap(self, message: Wanted, delivery: datetime) -> str | None:
        """The first cap the message reaches on the user's local day and ISO week of `delivery`."""
        zone = self._zone(message.user_id)
        day = delivery.astimezone(zone).date()
        limits = {
            "frequency_cap": (self.policy.get("caps") or {}).get(message.channel) or {},
            "journey_cap": ((self.policy.get("journey_caps") or {}).get(message.journey) or {}).get(message.channel)
            or {},
        }
        for kind, period in CAP_SCOPES:
            limit = limits[kind].get(f"per_{period}")
            if limit is None:
                continue
            earlier = [
                sent
                for sent in self.delivered
                if sent.user_id == message.user_id
                and sent.channel == message.channel
                and (kind == "frequency_cap" or sent.journey == message.journey)
                and _same(period, sent.at.astimezone(zone).date(), day)
            ]
            if len(earlier) >= limit:
                scope = message.channel if kind == "frequency_cap" else f"{message.journey}:{message.channel}"
                return f"{kind}:{scope}:{period}"
        return None

    def _zone(self, user_id: str) -> ZoneInfo:
        contact = self.contacts.get(user_id)
        return contact.zone if contact else ZoneInfo("UTC")

    @staticmethod
    def _row(message: Wanted, planning_reason: str | None, decision: tuple[str | None, datetime | None]) -> Row:
        reason = planning_reason or decision[0]
        if reason is not None:
            return Row(message.channel, message.journey, "skipped", reason, None)
        return Row(message.channel, message.journey, "planned", None, decision[1])


def _address_reason(channel: str, address: str, consent: bool, dead: set[tuple[str, str]]) -> str | None:
    """Consent is asked before the suppression list: a row without consent never reaches the list."""
    if not consent:
        return "no_consent"
    if (channel, address.lower() if channel == "email" else address) in dead:
        return DEAD_ADDRESS[channel]
    return None


def in_holdout(user_id: str, *, seed: str, percent: Decimal) -> bool:
    """SHA-256 of `seed|user_id`, its first eight bytes big-endian, modulo 10,000 buckets, below percent x 100."""
    digest = hashlib.sha256(f"{seed}|{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < percent * 100


def quiet_window(quiet: dict[str, Any] | None, channel: str) -> dict[str, Any] | None:
    """The channel's own window when the policy names the channel (null: none), else the policy-wide one."""
    if not quiet:
        return None
    channels = quiet.get("channels") or {}
    return channels.get(channel, quiet)  # a channel named with null has no window


def is_quiet(clock: time, window: dict[str, Any]) -> bool:
    start, end = (time.fromisoformat(window[name]) for name in ("start", "end"))
    if start < end:
        return start <= clock < end
    return clock >= start or clock < end


def _same(period: str, sent: date, day: date) -> bool:
    if period == "day":
        return sent == day
    return sent.isocalendar()[:2] == day.isocalendar()[:2]
