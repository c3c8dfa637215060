"""Emails through the SendGrid SDK, many to a POST /v3/mail/send: one personalization per email.

Why batches. Every request costs the SDK a new connection and its own work: about 2.5 ms of CPU per email when
each email had a request of its own, which held dispatch to a few hundred emails a second. One request now
carries up to `batch_size` emails (SendGrid takes at most 1000 personalizations), so that cost is paid once a
batch, and several batches are in flight at once.

How emails rendered for their recipients share one request. A request has a single `content`; ours holds only
tags (`TEXT_TAG`, `HTML_TAG`), and each email's personalization carries its own text and html as
`substitutions` of those tags, with its own `subject` (SendGrid needs no message-level subject when every
personalization has one) and its own custom_args, so event webhooks still name each email's send_key. Emails
share a request only when its message-level fields suit them all: the same categories and the same content kinds
(from and sandbox mode are the sender's own). SendGrid caps a personalization's substitutions at 10,000 bytes
(`limits`): a bigger email goes alone with its content inline, as before, and so does one whose subject, text,
html or custom_args contain a tag, which SendGrid would replace. SendGrid refuses an address twice in one
request, so a second email to an address waits for the next request.

What an answer means. A 2xx accepts every email of the request, all under its one X-Message-Id. A 429, a 5xx, a
timeout or a broken connection is about the request, so every email of it gets that outcome
(`errors.from_sendgrid`): the unit of ambiguity is one request, and a timeout leaves a whole batch in doubt. A
400 (or any other refusal of what the request holds) means SendGrid took none of it, but its errors need not
name the email at fault, and failing every email of the batch, or marking every recipient invalid, for one bad
address would be wrong. So each email of a refused batch is sent again alone: safe, since nothing went out, and
each gets its own answer.

Each email is first checked on its own against SendGrid's limits (`limits`): one SendGrid would refuse fails
alone with `invalid_message` and never joins a batch; each batch's body is checked again before the wire.
There is no idempotency key at SendGrid: the outbox's send_key rides in custom_args so that event webhooks can
be matched back to it.
"""

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sendgrid import SendGridAPIClient

from engine.providers.errors import (
    SENDGRID_FAILURES,
    InvalidMessageError,
    PermanentError,
    ProviderError,
    from_sendgrid,
    to_outcome,
)
from engine.providers.limits import (
    SENDGRID_MAX_PERSONALIZATIONS,
    SENDGRID_MAX_SUBSTITUTIONS_BYTES,
    json_bytes,
    sendgrid_request_problems,
)
from engine.providers.messages import Email, Outcome, require_unique_send_keys

TEXT_TAG = "-nudge-body-text-"
HTML_TAG = "-nudge-body-html-"
DEFAULT_BATCH_SIZE = 500
_TAGS = {"text/plain": TEXT_TAG, "text/html": HTML_TAG}

# The message-level fields a batch's emails share: categories and content kinds.
_SharedFields = tuple[tuple[str, ...], tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class _Accepted:
    message_id: str | None


_Answer = _Accepted | ProviderError


@dataclass
class _Batch:
    """Emails being gathered into one request, and their addresses (none may repeat in a request)."""

    emails: list[Email] = field(default_factory=list)
    addresses: set[str] = field(default_factory=set)


class SendGridEmailSender:
    """Sends the emails of each `send` call in as few requests as SendGrid's rules allow (see the module docstring).

    A batch never spans two `send` calls: the caller's wave (dispatch's `wave_size`) bounds it as well as
    `batch_size`.
    """

    def __init__(
        self,
        api_key: str,
        host: str,
        from_email: str,
        from_name: str | None,
        timeout: float = 10.0,
        sandbox_mode: bool = False,
        max_workers: int = 8,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if not api_key:
            raise ValueError("SendGridEmailSender needs an API key")
        if not 1 <= batch_size <= SENDGRID_MAX_PERSONALIZATIONS:
            raise ValueError(f"batch_size must be from 1 to {SENDGRID_MAX_PERSONALIZATIONS}, not {batch_size}")
        self._api_key = api_key
        self._host = host
        self._from = {"email": from_email} | ({"name": from_name} if from_name else {})
        self._timeout = timeout
        self._sandbox_mode = sandbox_mode
        self._batch_size = batch_size
        self._clients = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sendgrid")

    def send(self, emails: Sequence[Email]) -> list[Outcome]:
        """Send every email; one Outcome each, in the order given.

        An email that breaks a SendGrid limit (see `limits`) is not sent: its Outcome is `failed` with
        error_code "invalid_message" and a detail naming it, and the others go out as usual. A repeated
        send_key raises ValueError before any I/O: outcomes could not be told apart.
        """
        require_unique_send_keys([e.send_key for e in emails])
        outcomes: dict[str, Outcome] = {}
        sendable: list[Email] = []
        for email in emails:
            problems = _email_problems(email) + sendgrid_request_problems(self._body([email]))
            if problems:
                error = InvalidMessageError(email.send_key, "email", problems)
                outcomes[email.send_key] = to_outcome(email.send_key, error)
            else:
                sendable.append(email)
        outcomes |= self._send_requests(_requests(sendable, self._batch_size))
        return [outcomes[e.send_key] for e in emails]

    def close(self) -> None:
        """Wait for requests in flight and stop the worker threads."""
        self._pool.shutdown(wait=True)

    def _send_requests(self, requests: list[list[Email]]) -> dict[str, Outcome]:
        """Post every request, several in flight at once; then each email of a refused batch again, alone."""
        pending = [(emails, self._pool.submit(self._post, body)) for emails, body in self._bodies(requests)]
        outcomes: dict[str, Outcome] = {}
        refused: list[list[Email]] = []
        for emails, future in pending:
            answer = future.result()
            if len(emails) > 1 and isinstance(answer, PermanentError):
                refused += [[email] for email in emails]
            else:
                outcomes |= {email.send_key: _outcome(email.send_key, answer) for email in emails}
        return outcomes | (self._send_requests(refused) if refused else {})

    def _bodies(self, requests: list[list[Email]]) -> list[tuple[list[Email], dict[str, Any]]]:
        """Each request with its body. A batch whose body breaks a request limit, which `_requests` should never
        build, goes out as single emails rather than risk a refusal of all of them."""
        bodies = []
        for emails in requests:
            body = self._body(emails)
            if len(emails) > 1 and sendgrid_request_problems(body):
                bodies += [([email], self._body([email])) for email in emails]
            else:
                bodies.append((emails, body))
        return bodies

    def _post(self, body: dict[str, Any]) -> _Answer:
        try:
            response = self._client().send(body)
        except SENDGRID_FAILURES as exc:
            return from_sendgrid(exc, time.time())
        return _Accepted(response.headers.get("X-Message-Id"))

    def _client(self) -> SendGridAPIClient:
        """This thread's client: python_http_client mutates one shared header dict on every request."""
        client: SendGridAPIClient | None = getattr(self._clients, "client", None)
        if client is None:
            client = SendGridAPIClient(api_key=self._api_key, host=self._host)
            client.client.timeout = self._timeout  # the SDK has no timeout unless told
            self._clients.client = client
        return client

    def _body(self, emails: Sequence[Email]) -> dict[str, Any]:
        """The request body: one email with its content inline, several with tags and substitutions."""
        first = emails[0]
        if len(emails) == 1:
            body: dict[str, Any] = {
                "personalizations": [{"to": [{"email": first.to}], "custom_args": _custom_args(first)}],
                "from": self._from,
                "subject": first.subject,
                "content": [{"type": kind, "value": value} for kind, value in _content(first)],
            }
        else:
            body = {
                "personalizations": [_personalization(email) for email in emails],
                "from": self._from,
                "content": [{"type": kind, "value": _TAGS[kind]} for kind, _ in _content(first)],
            }
        if first.categories:
            body["categories"] = list(first.categories)
        if self._sandbox_mode:
            body["mail_settings"] = {"sandbox_mode": {"enable": True}}
        return body


def _requests(emails: Sequence[Email], batch_size: int) -> list[list[Email]]:
    """The emails as requests: batches of emails that may share one, and each email that may not, alone.

    An email joins the first batch of its shared fields that has room and lacks its address.
    """
    requests: list[list[Email]] = []
    filling: dict[_SharedFields, list[_Batch]] = {}
    for email in emails:
        if not _batchable(email):
            requests.append([email])
            continue
        batches = filling.setdefault(_shared_fields(email), [])
        address = _address(email)
        batch = next((b for b in batches if address not in b.addresses), None)
        if batch is None:
            batch = _Batch()
            batches.append(batch)
        batch.emails.append(email)
        batch.addresses.add(address)
        if len(batch.emails) == batch_size:
            batches.remove(batch)
            requests.append(batch.emails)
    return requests + [batch.emails for batches in filling.values() for batch in batches]


def _batchable(email: Email) -> bool:
    """Whether the email's content may travel as substitutions: within SendGrid's size limit, and nowhere
    containing a tag that SendGrid would replace."""
    fields = (email.subject, email.text, email.html, email.send_key, email.run_id)
    if any(tag in value for value in fields for tag in _TAGS.values()):
        return False
    return json_bytes(_substitutions(email)) <= SENDGRID_MAX_SUBSTITUTIONS_BYTES


def _shared_fields(email: Email) -> _SharedFields:
    return email.categories, tuple(kind for kind, _ in _content(email))


def _address(email: Email) -> str:
    """The address as `limits` compares addresses for repeats: without case or surrounding spaces."""
    return email.to.strip().lower()


def _content(email: Email) -> list[tuple[str, str]]:
    """(MIME type, value) of each kind of content the email has, plain text first as SendGrid requires."""
    return [(kind, value) for kind, value in (("text/plain", email.text), ("text/html", email.html)) if value]


def _substitutions(email: Email) -> dict[str, str]:
    return {_TAGS[kind]: value for kind, value in _content(email)}


def _custom_args(email: Email) -> dict[str, str]:
    return {"send_key": email.send_key, "run_id": email.run_id}


def _personalization(email: Email) -> dict[str, Any]:
    return {
        "to": [{"email": email.to}],
        "subject": email.subject,
        "custom_args": _custom_args(email),
        "substitutions": _substitutions(email),
    }


def _outcome(send_key: str, answer: _Answer) -> Outcome:
    if isinstance(answer, _Accepted):
        return Outcome(send_key, "accepted", provider_message_id=answer.message_id)
    return to_outcome(send_key, answer)


def _email_problems(email: Email) -> list[str]:
    """What SendGrid would refuse in this email that the request limits do not cover."""
    problems = []
    if not email.to.strip():
        problems.append("no recipient address")
    if not email.subject.strip():
        problems.append("empty subject")
    if not (email.text or email.html):
        problems.append("neither text nor html content")
    return problems
