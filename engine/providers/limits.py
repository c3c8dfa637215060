"""What SendGrid and FCM refuse, checked locally before the wire: the numbers, their sources, and the checks.

A message that breaks one of these limits would be refused by the provider anyway (or, for APNs's collapse id,
silently mangled). Checking here costs no request, names the message, and fails only that message: the senders
turn a problem into a `failed` Outcome with `error_code="invalid_message"` and send its neighbours.

SendGrid v3 Mail Send, per request (twilio.com/docs/sendgrid/api-reference/mail-send, "Limitations", and
.../mail-send/errors):

- at most 1000 personalizations;
- at most 1000 recipients, to + cc + bcc over all personalizations;
- each address once in the whole personalizations array, across to, cc and bcc ("Each unique email address in
  the personalizations array should only be included once"), compared here without case: in our batches a
  repeat that differs only in case is the same mistake;
- custom_args (a personalization's merged over the message's) under 10,000 bytes in total;
- substitutions at most 10,000 bytes per personalization ("The total collective size of your substitutions may
  not exceed 10,000 bytes per personalization object", the v3 reference of `personalizations[].substitutions`;
  the substitution-tags guide says 50,000: we keep to the smaller). SendGrid does not say how it counts; we
  count the substitutions object as JSON on the wire (`json_bytes`), never less than its keys and values;
- at most 10 categories, each at most 255 characters.

FCM HTTP v1 (firebase.google.com/docs/cloud-messaging/concept-options, "payload"): 4096 bytes at most for a
message's payload. FCM does not publish the exact count. Our reading, `fcm_payload_bytes`: the bytes of the
message's `data` and `notification` objects serialized as JSON the way the wire carries them (the SDK's
encoding, requests' `json.dumps` defaults: ", " and ": " separators, non-ASCII escaped as \\uXXXX), in one
object. That counts every key and value, which is what FCM says it counts, plus JSON punctuation, which
observed refusals suggest it counts too (each extra data pair costs its key, its value and about 6 bytes). We
would rather refuse a few dozen bytes early than send what FCM refuses; non-ASCII text counts 6 bytes a
character, as escaped. The loopback fake counts the same way, so a push passed here is accepted there.
`send_each` takes at most 500 messages.

APNs: an `apns-collapse-id` longer than 64 bytes is refused (developer.apple.com, "Sending notification
requests to APNs").
"""

import json
from collections.abc import Mapping, Sequence
from typing import Any

SENDGRID_MAX_PERSONALIZATIONS = 1000
SENDGRID_MAX_RECIPIENTS = 1000
SENDGRID_CUSTOM_ARGS_BYTES_BELOW = 10_000  # the total must be strictly less
SENDGRID_MAX_SUBSTITUTIONS_BYTES = 10_000  # per personalization, at most
SENDGRID_MAX_CATEGORIES = 10
SENDGRID_MAX_CATEGORY_CHARS = 255

FCM_MAX_PAYLOAD_BYTES = 4096
FCM_SEND_EACH_MAX = 500
APNS_MAX_COLLAPSE_ID_BYTES = 64
# Data keys FCM reserves for itself.
FCM_RESERVED_DATA_KEYS = frozenset({"from", "notification", "message_type"})
FCM_RESERVED_DATA_PREFIXES = ("google.", "gcm.")

_RECIPIENT_FIELDS = ("to", "cc", "bcc")


def json_bytes(value: Any) -> int:
    """Size of `value` as JSON on the wire (json.dumps defaults, as requests and python_http_client send it).

    Those defaults escape every non-ASCII character, so the JSON text has as many bytes as characters.
    """
    return len(json.dumps(value))


def sendgrid_request_problems(body: Mapping[str, Any]) -> list[str]:
    """Every per-request limit a v3 mail/send body breaks, as short phrases; empty when it may be sent."""
    problems = []
    personalizations: Sequence[Mapping[str, Any]] = body.get("personalizations") or ()
    if not personalizations:
        problems.append("no personalization")
    if len(personalizations) > SENDGRID_MAX_PERSONALIZATIONS:
        problems.append(
            f"{len(personalizations)} personalizations in one request, more than {SENDGRID_MAX_PERSONALIZATIONS}"
        )
    addresses = [
        str(recipient.get("email", "")).strip().lower()
        for personalization in personalizations
        for field in _RECIPIENT_FIELDS
        for recipient in personalization.get(field) or ()
    ]
    if len(addresses) > SENDGRID_MAX_RECIPIENTS:
        problems.append(
            f"{len(addresses)} recipients (to + cc + bcc) in one request, more than {SENDGRID_MAX_RECIPIENTS}"
        )
    repeated = _repeated(addresses)
    if repeated:
        problems.append(f"address {repeated!r} appears more than once in one request's to/cc/bcc")
    shared_args: Mapping[str, Any] = body.get("custom_args") or {}
    for index, personalization in enumerate(personalizations):
        problems += _personalization_problems(index, personalization, shared_args)
    categories: Sequence[str] = body.get("categories") or ()
    if len(categories) > SENDGRID_MAX_CATEGORIES:
        problems.append(f"{len(categories)} categories, more than {SENDGRID_MAX_CATEGORIES}")
    if any(not category or len(category) > SENDGRID_MAX_CATEGORY_CHARS for category in categories):
        problems.append(f"a category is empty or longer than {SENDGRID_MAX_CATEGORY_CHARS} characters")
    return problems


def _personalization_problems(
    index: int, personalization: Mapping[str, Any], shared_args: Mapping[str, Any]
) -> list[str]:
    """The size limits of one personalization: its custom_args (merged over the message's) and substitutions."""
    problems = []
    args_size = json_bytes({**shared_args, **(personalization.get("custom_args") or {})})
    if args_size >= SENDGRID_CUSTOM_ARGS_BYTES_BELOW:
        problems.append(
            f"custom_args of personalization {index} take {args_size:,} bytes, "
            f"not under {SENDGRID_CUSTOM_ARGS_BYTES_BELOW:,}"
        )
    substitutions_size = json_bytes(personalization.get("substitutions") or {})
    if substitutions_size > SENDGRID_MAX_SUBSTITUTIONS_BYTES:
        problems.append(
            f"substitutions of personalization {index} take {substitutions_size:,} bytes, "
            f"more than {SENDGRID_MAX_SUBSTITUTIONS_BYTES:,}"
        )
    return problems


def fcm_payload_bytes(data: Mapping[str, str], notification: Mapping[str, str]) -> int:
    """The size FCM's 4096-byte limit applies to: a message's `data` and `notification` objects as they go on
    the wire (see the module docstring)."""
    return json_bytes({"data": data, "notification": notification})


def fcm_payload_problems(data: Mapping[str, str], notification: Mapping[str, str]) -> list[str]:
    """The payload limit as a problem phrase, if a message of this `data` and `notification` breaks it."""
    size = fcm_payload_bytes(data, notification)
    if size > FCM_MAX_PAYLOAD_BYTES:
        return [f"payload (data + notification) takes {size:,} bytes, more than {FCM_MAX_PAYLOAD_BYTES:,}"]
    return []


def _repeated(values: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None
