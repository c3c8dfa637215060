"""Receiving one SendGrid Event Webhook request: verify, parse, store once, derive facts and suppressions.

This is the plain function under the HTTP receiver; time and the database are parameters so tests and
replays decide what "now" is. Everything a batch implies is written in one transaction: a crash leaves
nothing half-stored, and SendGrid's retry of the same batch then stores it whole.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from engine.feedback.facts import record_facts
from engine.feedback.payload import parse_batch
from engine.feedback.provider_events import store_provider_events
from engine.feedback.signature import verify_request
from engine.feedback.suppressions import record_suppressions


@dataclass(frozen=True, slots=True)
class ReceiveResult:
    """What a batch added: events new to us, and events we already had (a retried or replayed batch)."""

    stored: int
    duplicates: int


def receive_sendgrid(
    body: bytes, headers: Mapping[str, str], *, now: datetime, public_key: str, database: Engine
) -> ReceiveResult:
    """Store a signed batch of SendGrid events once each, with the engagement facts and suppressions they imply.

    Args:
        body: the request body exactly as received (the signature covers these bytes).
        headers: the request headers, any case.
        now: the instant of receipt: bounds the signed timestamp's age and becomes `received_at`.
        public_key: SendGrid's verification key, base64 DER.
        database: the engine's database.

    Raises:
        SignatureRejected: unsigned, badly signed, or signed more than MAX_SKEW away from `now`.
        MalformedBatch: authentic, but not a JSON array of event objects.
    """
    events = parse_batch(verify_request(body, headers, now=now, public_key=public_key))
    with database.begin() as conn:
        stored = store_provider_events(conn, events, received_at=now)
        record_facts(conn, events)
        record_suppressions(conn, events)
    return ReceiveResult(stored=stored, duplicates=len(events) - stored)
