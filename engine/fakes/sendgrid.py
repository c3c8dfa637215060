"""A loopback SendGrid: POST /v3/mail/send with SendGrid's auth, validation, errors and rate limits.

Scripting (`fail_next`, `hang_next`, `rate_limit`, `bounce`, `hold_accepted`) and seeded chaos
(`set_chaos`) let tests provoke every answer the delivery layer must handle. Both act on requests: one
scripted answer (or one chaos draw, made for the send key of a request's first personalization) covers every
personalization of a request. Requests that arrive while a previously returned X-RateLimit-Reset is still in
the future are kept in `early_requests()`: any request once the 429 is older than `early_grace` (requests sent
before it was answered are still arriving then), and any request carrying a send key before the reset
returned to a request that carried that same key. A well-behaved client sends none.

`received()` holds the requests as they came over the wire, so a request of many personalizations is one
record whose content may be substitution tags. What each recipient was sent is `accepted()`: one `AcceptedMail`
per recipient of every accepted message, whose subject, text and html have that personalization's
substitutions applied, as SendGrid applies them before delivery.

Like SendGrid's Signed Event Webhook, the fake holds an ECDSA P-256 key pair: `webhook_events_for` makes
realistic events for the mail it accepted and `signed_webhook_batch` signs a batch the way SendGrid does, for
a receiver that verifies with `webhook_public_key()`.
"""

import base64
import json
import math
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhookHeader

from engine.fakes.chaos import Chaos
from engine.fakes.server import FakeServer, Reply, Request

MAIL_SEND_PATH = "/v3/mail/send"
EVENTS_PATH = "/_fake/events"
DEFAULT_API_KEY = "SG.nudge-fake.local-only-key"

_HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message."
_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_MAX_CUSTOM_ARGS_BYTES = 10_000
_MAX_SUBSTITUTIONS_BYTES = 10_000
_MAX_PERSONALIZATIONS = 1000
_MAX_CATEGORIES = 10


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    reset_in: float


@dataclass(frozen=True, slots=True)
class _Hang:
    seconds: float


@dataclass(frozen=True, slots=True)
class AcceptedMail:
    """One recipient of a message the fake accepted: what its webhook events are about and what it was sent.

    `subject`, `text` and `html` are as delivered, its personalization's substitutions applied; they are
    worked out when read, so that accepting a large batch costs the fake no more than SendGrid's validation.
    """

    message_id: str
    recipient_index: int
    email: str
    custom_args: dict[str, str]
    categories: tuple[str, ...]
    raw_subject: str = ""
    raw_content: tuple[tuple[str, str], ...] = ()  # (MIME type, value) before substitution
    substitutions: dict[str, str] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return _substitute(self.raw_subject, self.substitutions)

    @property
    def text(self) -> str | None:
        return self._content("text/plain")

    @property
    def html(self) -> str | None:
        return self._content("text/html")

    def _content(self, kind: str) -> str | None:
        value = next((value for type_, value in self.raw_content if type_ == kind), None)
        return None if value is None else _substitute(value, self.substitutions)


@dataclass(frozen=True, slots=True)
class _Admission:
    scripted: _Failure | _Hang | None
    rate_headers: dict[str, str]
    over_limit: bool


class FakeSendGrid(FakeServer):
    """SendGrid's v3 mail/send on 127.0.0.1.

    Args:
        api_key: the only key accepted as `Authorization: Bearer <key>`.
        rate_limit: (requests, window seconds): beyond that many requests in a fixed window the fake
            answers 429 on its own, with X-RateLimit-Reset at the window's end.
        early_grace: requests for other send keys arriving this soon after a 429 are not counted as early;
            they were already in flight when the client got the 429.
        clock: epoch seconds, for arrivals and rate-limit resets.
    """

    send_path_prefix = MAIL_SEND_PATH

    def __init__(
        self,
        api_key: str = DEFAULT_API_KEY,
        *,
        port: int = 0,
        record_file: Path | None = None,
        rate_limit: tuple[int, float] | None = None,
        early_grace: float = 0.25,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(port, record_file, clock)
        self.api_key = api_key
        self._chaos: Chaos | None = None
        self._key_resets: dict[str, float] = {}  # send key -> the X-RateLimit-Reset last returned to it
        self._rate_limit = rate_limit
        self._early_grace = early_grace
        self._script: deque[_Failure | _Hang] = deque()
        self._bounced: set[str] = set()
        self._events: list[dict[str, Any]] = []
        self._early: list[Request] = []
        self._window: tuple[float, int] = (0.0, 0)  # (window start, requests in it)
        self._limited_at = 0.0  # when the last 429 went out
        self._limited_until = 0.0  # the X-RateLimit-Reset it carried
        self._state = threading.Lock()
        self._accepted: list[AcceptedMail] = []
        self._webhook_key = ec.generate_private_key(ec.SECP256R1())

    def fail_next(self, status: int, count: int = 1, *, reset_in: float = 1.0) -> None:
        """Answer the next `count` authorized sends with `status` (400, 429, 500, 502, 503, ...).

        A 429 carries X-RateLimit-Reset `reset_in` seconds ahead, rounded up to whole epoch seconds
        as SendGrid sends it.
        """
        with self._state:
            self._script.extend(_Failure(status, reset_in) for _ in range(count))

    def hang_next(self, seconds: float, count: int = 1) -> None:
        """Hold the next `count` authorized sends for `seconds` before answering them normally."""
        with self._state:
            self._script.extend(_Hang(seconds) for _ in range(count))

    def set_chaos(self, chaos: Chaos | None) -> None:
        """Inject seeded faults into unscripted sends: 429 (reset `wait_seconds` ahead), 503, or a hang."""
        with self._state:
            self._chaos = chaos

    def bounce(self, *addresses: str) -> None:
        """Accept mail to these addresses (202, like SendGrid) but record a bounce event for each."""
        with self._state:
            self._bounced.update(a.lower() for a in addresses)

    def events(self) -> list[dict[str, Any]]:
        """Bounce events in SendGrid's Event Webhook shape (custom_args as top-level keys)."""
        with self._state:
            return list(self._events)

    def early_requests(self) -> list[Request]:
        """Requests that arrived before an X-RateLimit-Reset the fake had already returned."""
        with self._state:
            return list(self._early)

    def handle(self, request: Request) -> Reply:
        if request.method == "GET" and request.path == EVENTS_PATH:
            return Reply(200, self.events())
        if request.path != MAIL_SEND_PATH:
            return _errors(404, [(None, "not found")])
        if request.method != "POST":
            return _errors(405, [(None, "method not allowed")])
        if request.header("Authorization") != f"Bearer {self.api_key}":
            return _errors(401, [(None, "The provided authorization grant is invalid, expired, or revoked")])
        keys = _send_keys(request.body)
        admission = self._admit(request, keys)
        scripted = admission.scripted or self._chaos_answer(keys[0] if keys else None)
        if isinstance(scripted, _Hang):
            self.pause(scripted.seconds)
        elif scripted is not None:
            return self._failure(scripted, request.timestamp, keys)
        if admission.over_limit:
            return _too_many(admission.rate_headers)
        problems = validate_mail(request.body)
        if problems:
            return _errors(400, problems)
        return self._accept(request.body, admission.rate_headers)

    def _admit(self, request: Request, keys: list[str]) -> _Admission:
        """Note an early arrival, count the request in its rate window, and take the next scripted answer."""
        now = request.timestamp
        with self._state:
            if (self._limited_at + self._early_grace < now < self._limited_until) or any(
                now < self._key_resets.get(key, 0.0) for key in keys
            ):
                self._early.append(request)
            scripted = self._script.popleft() if self._script else None
            if self._rate_limit is None:
                return _Admission(scripted, {}, over_limit=False)
            limit, window = self._rate_limit
            start = math.floor(now / window) * window
            count = self._window[1] + 1 if self._window[0] == start else 1
            self._window = (start, count)
            reset = math.ceil(start + window)
            if count > limit:
                self._note_limited(now, reset, keys)
            headers = {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(max(limit - count, 0)),
                "X-RateLimit-Reset": str(reset),
            }
            return _Admission(scripted, headers, over_limit=count > limit)

    def _note_limited(self, now: float, reset: float, keys: list[str]) -> None:
        self._limited_at = now
        self._limited_until = max(self._limited_until, reset)
        for key in keys:
            self._key_resets[key] = max(self._key_resets.get(key, 0.0), reset)

    def _chaos_answer(self, identity: str | None) -> _Failure | _Hang | None:
        with self._state:
            chaos = self._chaos
        fault = chaos.fault_for(identity or "") if chaos is not None else None
        if fault is None or chaos is None:
            return None
        if fault == "rate_limited":
            return _Failure(429, chaos.wait_seconds)
        if fault == "unavailable":
            return _Failure(503, 0.0)
        return _Hang(chaos.hang_seconds)

    def _failure(self, failure: _Failure, now: float, keys: list[str]) -> Reply:
        if failure.status != 429:
            return _errors(failure.status, [(None, f"scripted failure {failure.status}")])
        reset = math.ceil(now + failure.reset_in)
        with self._state:
            self._note_limited(now, reset, keys)
        limit = str(self._rate_limit[0]) if self._rate_limit else "600"
        return _too_many({"X-RateLimit-Limit": limit, "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)})

    def _accept(self, body: dict[str, Any], limit_headers: dict[str, str]) -> Reply:
        if body.get("mail_settings", {}).get("sandbox_mode", {}).get("enable"):
            return Reply(200, None, limit_headers)  # validated, not delivered: no message id
        message_id = secrets.token_urlsafe(16)[:22]
        self._record_bounces(body, message_id)
        self._remember_accepted(body, message_id)
        return Reply(202, None, limit_headers | {"X-Message-Id": message_id})

    def _record_bounces(self, body: dict[str, Any], message_id: str) -> None:
        now = int(time.time())
        with self._state:
            bounced = set(self._bounced)
        for personalization in body["personalizations"]:
            custom_args = {**body.get("custom_args", {}), **personalization.get("custom_args", {})}
            for recipient in personalization["to"]:
                address = recipient["email"]
                if address.lower() not in bounced:
                    continue
                event = {
                    **custom_args,
                    "email": address,
                    "timestamp": now,
                    "event": "bounce",
                    "type": "bounce",
                    "status": "5.1.1",
                    "reason": "550 5.1.1 The email account that you tried to reach does not exist.",
                    "sg_event_id": uuid.uuid4().hex,
                    "sg_message_id": f"{message_id}.filter0001.0.0",
                    "smtp-id": f"<{message_id}@fake.sendgrid.local>",
                    "category": body.get("categories", []),
                }
                with self._state:
                    self._events.append(event)

    def accepted(self) -> list[AcceptedMail]:
        """Every recipient of every accepted (not sandboxed) message, oldest first."""
        with self._state:
            return list(self._accepted)

    def webhook_events_for(
        self, send_keys: Iterable[str], event: str, *, timestamp: int, **fields: Any
    ) -> list[dict[str, Any]]:
        """One `event` per accepted recipient whose custom_args carry one of `send_keys`, shaped as SendGrid's.

        Each has sg_event_id, sg_message_id, email, timestamp, event, the type's own fields (a click's url, a
        bounce's status and reason, ...), `category` as SendGrid sends it (a string for one, an array for
        several) and the custom_args at the top level. `fields` add to or override those.

        Raises:
            ValueError: an unknown event type, or a send_key the fake never accepted: there is no feedback
                about mail SendGrid never took.
        """
        if event not in _EVENT_FIELDS:
            raise ValueError(f"unknown SendGrid event {event!r}; known: {', '.join(_EVENT_FIELDS)}")
        wanted = list(dict.fromkeys(send_keys))
        by_key: dict[str, list[AcceptedMail]] = {}
        for mail in self.accepted():
            by_key.setdefault(mail.custom_args.get("send_key", ""), []).append(mail)
        unknown = [key for key in wanted if key not in by_key]
        if unknown:
            raise ValueError(f"the fake accepted no mail with send_key {', '.join(map(repr, unknown))}")
        return [_webhook_event(mail, event, timestamp, fields) for key in wanted for mail in by_key[key]]

    def webhook_public_key(self) -> str:
        """The verification key as SendGrid's UI shows it: base64 DER SubjectPublicKeyInfo, one line."""
        der = self._webhook_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def signed_webhook_batch(self, events: Sequence[dict[str, Any]], *, timestamp: int) -> tuple[bytes, dict[str, str]]:
        """The body and headers of an Event Webhook POST of these events, signed at `timestamp` (epoch seconds)."""
        body = json.dumps(list(events)).encode()
        return body, self.webhook_headers(body, timestamp=timestamp)

    def webhook_headers(self, body: bytes, *, timestamp: int) -> dict[str, str]:
        """SendGrid's headers for any body: ECDSA P-256/SHA-256 over timestamp + body, DER, base64."""
        signature = self._webhook_key.sign(str(timestamp).encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "User-Agent": "SendGrid Event API",
            EventWebhookHeader.SIGNATURE: base64.b64encode(signature).decode(),
            EventWebhookHeader.TIMESTAMP: str(timestamp),
        }

    def _remember_accepted(self, body: dict[str, Any], message_id: str) -> None:
        mails = []
        categories = tuple(body.get("categories", []))
        content = tuple((block.get("type", ""), block["value"]) for block in body.get("content", []))
        for personalization in body["personalizations"]:
            custom_args = {**body.get("custom_args", {}), **personalization.get("custom_args", {})}
            subject = personalization.get("subject") or body.get("subject", "")
            substitutions = personalization.get("substitutions", {})
            for recipient in personalization["to"]:
                address = recipient["email"]
                mails.append(
                    AcceptedMail(
                        message_id, len(mails), address, custom_args, categories, subject, content, substitutions
                    )
                )
        with self._state:
            self._accepted.extend(mails)


_USER_AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0"
# Each event type's own fields, as in SendGrid's Event Webhook reference; delivery events also carry smtp-id.
_EVENT_FIELDS: dict[str, dict[str, Any]] = {
    "processed": {},
    "deferred": {"response": "400 4.2.2 Mailbox full, try again later", "attempt": "1"},
    "delivered": {"response": "250 2.0.0 OK", "ip": "149.72.1.1", "tls": 1},
    "bounce": {
        "type": "bounce",
        "status": "5.1.1",
        "reason": "550 5.1.1 The email account that you tried to reach does not exist.",
        "bounce_classification": "Invalid Address",
    },
    "dropped": {"reason": "Bounced Address", "status": "5.0.0"},
    "open": {"useragent": _USER_AGENT, "ip": "203.0.113.7", "sg_machine_open": False},
    "click": {
        "useragent": _USER_AGENT,
        "ip": "203.0.113.7",
        "url": "https://example.com/",
        "url_offset": {"index": 0, "type": "html"},
    },
    "spamreport": {},
    "unsubscribe": {"useragent": _USER_AGENT, "ip": "203.0.113.7"},
    "group_unsubscribe": {"useragent": _USER_AGENT, "ip": "203.0.113.7", "asm_group_id": 1},
}
_DELIVERY_EVENTS = frozenset({"processed", "deferred", "delivered", "bounce", "dropped"})


def _webhook_event(mail: AcceptedMail, event: str, timestamp: int, fields: dict[str, Any]) -> dict[str, Any]:
    shaped: dict[str, Any] = {
        "email": mail.email,
        "timestamp": timestamp,
        "event": event,
        "sg_event_id": base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
        "sg_message_id": f"{mail.message_id}.filter0001.{mail.recipient_index}.0",
        **_EVENT_FIELDS[event],
    }
    if event in _DELIVERY_EVENTS:
        shaped["smtp-id"] = f"<{mail.message_id}@fake.sendgrid.local>"
    if mail.categories:
        shaped["category"] = mail.categories[0] if len(mail.categories) == 1 else list(mail.categories)
    return {**shaped, **mail.custom_args, **fields}


# SendGrid's own wording, so that error details read like production's.
_MESSAGES = {
    "personalizations": "The personalizations field is required and must have at least one personalization.",
    "too_many_personalizations": "The personalizations field cannot have more than 1000 items.",
    "to": "The to array is required for all personalization objects, and must have at least one email "
    "object with a valid email address.",
    "address": "Does not contain a valid address.",
    "from": "The from object must be provided for every email send. It is an object that requires an email "
    "parameter, but may also contain a name parameter.",
    "from_address": "The from email does not contain a valid address.",
    "subject": "The subject is required. You can get around this requirement if you use a template with a "
    "subject defined or if every personalization has a subject defined.",
    "content": "Unless a valid template_id is provided, the content parameter is required. There must be at "
    "least one defined content block.",
    "content_value": "The content value must be a string at least one character in length.",
    "content_order": "If present, text/plain content must be first, followed by text/html, followed by any "
    "other content.",
    "custom_args": "The custom_args total size must be less than 10000 bytes.",
    "substitutions": "The total collective size of your substitutions may not exceed 10,000 bytes per "
    "personalization object.",
    "repeated_address": "Each email address in the personalization block should be unique between to, cc, and "
    "bcc. We found the first duplicate instance of [{address}] in the personalizations.{index}.{field} field.",
    "categories": "You can't have more than 10 categories per request.",
}

Problem = tuple[str | None, str]  # (field, message)


def validate_mail(body: Any) -> list[Problem]:
    """The (field, message) problems SendGrid would report for a v3 mail/send body."""
    if not isinstance(body, dict):
        return [(None, "Bad Request")]
    problems: list[Problem] = []
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        problems.append(("personalizations", _MESSAGES["personalizations"]))
        personalizations = []
    elif len(personalizations) > _MAX_PERSONALIZATIONS:
        problems.append(("personalizations", _MESSAGES["too_many_personalizations"]))
    for i, personalization in enumerate(personalizations):
        problems += _personalization_problems(i, personalization)
    problems += _repeated_address_problems(personalizations)
    sender = body.get("from")
    if not isinstance(sender, dict) or not sender.get("email"):
        problems.append(("from.email", _MESSAGES["from"]))
    elif not _ADDRESS.fullmatch(str(sender["email"])):
        problems.append(("from.email", _MESSAGES["from_address"]))
    has_template = bool(body.get("template_id"))
    subject_everywhere = bool(personalizations) and all(
        isinstance(p, dict) and p.get("subject") for p in personalizations
    )
    if not (has_template or body.get("subject") or subject_everywhere):
        problems.append(("subject", _MESSAGES["subject"]))
    problems += _content_problems(body.get("content"), has_template)
    if _json_size(body.get("custom_args", {})) >= _MAX_CUSTOM_ARGS_BYTES:
        problems.append(("custom_args", _MESSAGES["custom_args"]))
    if len(body.get("categories", [])) > _MAX_CATEGORIES:
        problems.append(("categories", _MESSAGES["categories"]))
    return problems


def _personalization_problems(i: int, personalization: Any) -> list[Problem]:
    to = personalization.get("to") if isinstance(personalization, dict) else None
    if not isinstance(to, list) or not to:
        return [(f"personalizations.{i}.to", _MESSAGES["to"])]
    problems: list[Problem] = [
        (f"personalizations.{i}.to.{j}.email", _MESSAGES["address"])
        for j, recipient in enumerate(to)
        if not isinstance(recipient, dict) or not _ADDRESS.fullmatch(str(recipient.get("email", "")))
    ]
    if _json_size(personalization.get("custom_args", {})) >= _MAX_CUSTOM_ARGS_BYTES:
        problems.append((f"personalizations.{i}.custom_args", _MESSAGES["custom_args"]))
    if _json_size(personalization.get("substitutions", {})) > _MAX_SUBSTITUTIONS_BYTES:
        problems.append((f"personalizations.{i}.substitutions", _MESSAGES["substitutions"]))
    return problems


def _repeated_address_problems(personalizations: list[Any]) -> list[Problem]:
    """SendGrid's refusal of an address met twice in a request's to, cc and bcc, at the first repeat: across
    personalizations as within one. Compared without case, as `engine.providers.limits` compares them."""
    seen: set[str] = set()
    for i, personalization in enumerate(personalizations):
        for field_ in ("to", "cc", "bcc"):
            recipients = personalization.get(field_) if isinstance(personalization, dict) else None
            for recipient in recipients if isinstance(recipients, list) else ():
                address = str(recipient.get("email", "")).lower() if isinstance(recipient, dict) else ""
                if address in seen:
                    message = _MESSAGES["repeated_address"].format(address=address, index=i, field=field_)
                    return [(f"personalizations.{i}", message)]
                seen.add(address)
    return []


def _content_problems(content: Any, has_template: bool) -> list[Problem]:
    if not content:
        return [] if has_template else [("content", _MESSAGES["content"])]
    problems: list[Problem] = [
        (f"content.{i}.value", _MESSAGES["content_value"])
        for i, block in enumerate(content)
        if not isinstance(block, dict) or not isinstance(block.get("value"), str) or not block["value"]
    ]
    types = [block.get("type") for block in content if isinstance(block, dict)]
    if "text/plain" in types and types[0] != "text/plain":
        problems.append(("content.0.type", _MESSAGES["content_order"]))
    return problems


def _json_size(value: Any) -> int:
    return len(json.dumps(value).encode())


def _substitute(text: str, substitutions: dict[str, str]) -> str:
    """`text` with each tag replaced by its value, in one pass: values are not searched for tags (SendGrid
    advises against nesting them, and nudge never does)."""
    tags = tuple(tag for tag in substitutions if tag)
    if not tags:
        return text
    return _tag_pattern(tags).sub(lambda match: substitutions[match.group()], text)


@lru_cache(maxsize=64)
def _tag_pattern(tags: tuple[str, ...]) -> re.Pattern[str]:
    # Longest first: a tag that begins another must not cut it short.
    return re.compile("|".join(re.escape(tag) for tag in sorted(tags, key=len, reverse=True)))


def _send_keys(body: Any) -> list[str]:
    """The send keys nudge puts in a request's personalizations, in their order."""
    personalizations = body.get("personalizations") if isinstance(body, dict) else None
    if not isinstance(personalizations, list):
        return []
    args = (p.get("custom_args") if isinstance(p, dict) else None for p in personalizations)
    keys = (a.get("send_key") if isinstance(a, dict) else None for a in args)
    return [key for key in keys if isinstance(key, str)]


def _too_many(headers: dict[str, str]) -> Reply:
    return Reply(429, {"errors": [{"field": None, "message": "too many requests"}]}, headers)


def _errors(status: int, problems: list[Problem]) -> Reply:
    """SendGrid's error body: {"errors": [{"message", "field", "help"}]}."""
    return Reply(
        status,
        {
            "errors": [
                {"message": message, "field": field_, "help": _HELP + field_ if field_ else None}
                for field_, message in problems
            ]
        },
    )
