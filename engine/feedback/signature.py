"""Checking that a webhook request comes from SendGrid, recently, with SendGrid's own helper.

SendGrid signs the timestamp header followed by the raw body with ECDSA P-256 / SHA-256 and sends the DER
signature base64-encoded. We hand exactly those bytes to `sendgrid.helpers.eventwebhook.EventWebhook`, so that
our reading of the scheme cannot differ from SendGrid's. The signature makes a batch authentic, not fresh: a
captured request could be replayed forever, so the signed timestamp must also be within MAX_SKEW of `now`.
"""

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import cache

from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook, EventWebhookHeader

from engine.feedback.errors import SignatureRejected

MAX_SKEW = timedelta(seconds=300)
SIGNATURE_HEADER = EventWebhookHeader.SIGNATURE
TIMESTAMP_HEADER = EventWebhookHeader.TIMESTAMP


def verify_request(body: bytes, headers: Mapping[str, str], *, now: datetime, public_key: str) -> str:
    """The body as text once it is proven SendGrid's and fresh; SignatureRejected otherwise.

    Args:
        body: the request body exactly as received.
        headers: the request headers; names are matched case-insensitively, as HTTP requires.
        now: the instant of receipt, timezone-aware.
        public_key: the verification key from SendGrid's Mail Settings (base64 DER SubjectPublicKeyInfo).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    signature = _header(headers, SIGNATURE_HEADER)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise SignatureRejected(f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header")
    try:
        signed_at = int(timestamp)
    except ValueError:
        raise SignatureRejected(f"{TIMESTAMP_HEADER} {timestamp!r} is not epoch seconds") from None
    age = now.timestamp() - signed_at
    if age > MAX_SKEW.total_seconds():
        raise SignatureRejected(f"signed {age:.0f} s ago, more than {MAX_SKEW.total_seconds():.0f} s")
    if -age > MAX_SKEW.total_seconds():
        raise SignatureRejected(f"signed {-age:.0f} s in the future, more than {MAX_SKEW.total_seconds():.0f} s")
    try:
        text = body.decode("utf-8")
        valid = _verifier(public_key).verify_signature(text, signature, timestamp)
    except (UnicodeDecodeError, binascii.Error):
        valid = False  # SendGrid sends UTF-8 JSON and base64; anything else cannot be its signature
    if not valid:
        raise SignatureRejected("signature does not match the body and timestamp")
    return text


def load_public_key(public_key: str) -> ec.EllipticCurvePublicKey:
    """The key as the helper loads it, or ValueError saying what is wrong with it.

    The helper accepts any key type it can parse and would fail with a TypeError at the first request; a
    SendGrid verification key is always EC P-256, so anything else is a configuration mistake caught here.
    """
    if not public_key.strip():
        raise ValueError("is empty")
    try:
        base64.b64decode(public_key, validate=True)
        key = EventWebhook().convert_public_key_to_ecdsa(public_key)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"is not a base64 DER public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("is not an ECDSA P-256 key, which is what SendGrid signs with")
    return key


@cache
def _verifier(public_key: str) -> EventWebhook:
    """One verifier per key: parsing the key on every request would be wasted work."""
    load_public_key(public_key)  # refuse what the helper would load but could not verify with
    return EventWebhook(public_key)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)
