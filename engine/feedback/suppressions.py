"""Addresses we must not send to again, and the question the planner asks before each dispatch.

Bounces, drops, unsubscribes and spam reports all mean the same to the planner: this address gets no more
mail, and a planned message to it becomes `skipped:suppressed`. SendGrid would drop such mail itself, but it
would still count against our volume and, for spam reports, against our reputation.
"""

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.engine import Connection

from engine.channels.registry import channel as channel_named
from engine.db import insert_new
from engine.feedback.meanings import meaning_of
from engine.feedback.payload import WebhookEvent
from models.feedback import Suppression

EMAIL = "email"
SOURCE_SENDGRID = "sendgrid"

_SUPPRESSION: Table = Suppression.__table__  # type: ignore[attr-defined]
_CHUNK = 5_000

# A bounce of type "blocked" is a refusal for now (reputation, rate, content), not a dead address: SendGrid
# itself keeps blocks off its bounce list.
_TEMPORARY_BOUNCE_TYPES = frozenset({"blocked"})
# Drop reasons about the message or the account, which say nothing about the address.
_MESSAGE_DROP_REASONS = ("Invalid SMTPAPI header", "Spam Content", "Recipient List over Package Quota")


def normalize_address(channel: str, address: str) -> str:
    """The form addresses are stored and compared in, as the channel says: emails ignore case, tokens not."""
    return channel_named(channel).normalize(address)


def suppression_reason(event: WebhookEvent) -> str | None:
    """Why this event suppresses its address, or None when it does not."""
    reason = meaning_of(event.event).suppression
    if reason == "bounce" and event.type in _TEMPORARY_BOUNCE_TYPES:
        return None
    if reason == "dropped" and (event.reason or "").startswith(_MESSAGE_DROP_REASONS):
        return None
    return reason


def record_suppressions(conn: Connection, events: Sequence[WebhookEvent]) -> int:
    """Suppress the addresses these events condemn; returns how many addresses became newly suppressed.

    Events are taken oldest first, so within a batch the earliest reason wins; an address already suppressed
    keeps its first reason and date.
    """
    rows: list[dict[str, Any]] = []
    for event in sorted(events, key=lambda e: (e.timestamp, e.sg_event_id)):
        reason = suppression_reason(event)
        if reason is None or not event.email.strip():
            continue
        rows.append(
            {
                "channel": EMAIL,
                "address": normalize_address(EMAIL, event.email),
                "reason": reason,
                "source": SOURCE_SENDGRID,
                "event_id": event.sg_event_id,
                "since": event.at,
            }
        )
    return insert_new(conn, _SUPPRESSION, rows) if rows else 0


def suppressed(conn: Connection, channel: str, addresses: Iterable[str]) -> set[str]:
    """The given addresses that are suppressed on `channel`, as given (so the caller can match them as is).

    Args:
        conn: a connection, typically the planner's transaction.
        channel: "email" or "push".
        addresses: candidate recipients; null-free, any case for email.
    """
    by_form: dict[str, set[str]] = {}
    for address in addresses:
        by_form.setdefault(normalize_address(channel, address), set()).add(address)
    forms = list(by_form)
    found: set[str] = set()
    for start in range(0, len(forms), _CHUNK):
        chunk = forms[start : start + _CHUNK]
        query = select(_SUPPRESSION.c.address).where(
            _SUPPRESSION.c.channel == channel, _SUPPRESSION.c.address.in_(chunk)
        )
        for (form,) in conn.execute(query):
            found |= by_form[form]
    return found
