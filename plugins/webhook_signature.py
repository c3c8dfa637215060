"""How a webhook request is signed, and how a receiver checks it.

Every request carries three headers:

    X-Nudge-Send-Key   the outbox row's send key: the same on every retry of the message, so a receiver that
                       remembers keys it accepted can drop a duplicate (a retry after a timeout may be one)
    X-Nudge-Timestamp  when this attempt was signed, in whole seconds since the Unix epoch (UTC)
    X-Nudge-Signature  "v1=" and the lowercase hex HMAC-SHA256, keyed with the shared secret (its UTF-8 bytes),
                       of the timestamp header's ASCII digits, one ".", then the raw request body bytes

To verify: recompute the HMAC over `timestamp + "." + body` exactly as received (before parsing the JSON),
compare it with the header in constant time, and refuse a timestamp more than five minutes from your clock, so
that a captured request cannot be replayed later. The body names the send key too; trust it only once the
signature holds.
"""

import hashlib
import hmac

SEND_KEY_HEADER = "X-Nudge-Send-Key"
TIMESTAMP_HEADER = "X-Nudge-Timestamp"
SIGNATURE_HEADER = "X-Nudge-Signature"
SCHEME = "v1="
TOLERANCE_SECONDS = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Nudge-Signature value of `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return SCHEME + digest


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, now: float) -> bool:
    """Whether `signature` signs `body` at `timestamp` with `secret`, and the timestamp is recent enough."""
    if not timestamp.isdigit() or abs(now - int(timestamp)) > TOLERANCE_SECONDS:
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)
