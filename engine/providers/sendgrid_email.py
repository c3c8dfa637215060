"""Emails through the SendGrid SDK: one POST /v3/mail/send per email, a few in flight at once."""

import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sendgrid import SendGridAPIClient

from engine.providers.errors import SENDGRID_FAILURES, from_sendgrid, to_outcome
from engine.providers.messages import Email, Outcome, require_unique_send_keys

# SendGrid refuses a request whose custom_args reach 10,000 bytes, and more than 10 categories.
_MAX_CUSTOM_ARGS_BYTES = 10_000
_MAX_CATEGORIES = 10
_MAX_CATEGORY_CHARS = 255


class SendGridEmailSender:
    """Sends each email as its own request, because each is rendered for its recipient.

    Batching recipients into personalizations would save requests only for identical content, and
    SendGrid's answer to a batched request cannot say which personalization failed. There is no
    idempotency key at SendGrid: the outbox's send_key rides along in custom_args so that event
    webhooks can be matched back to it.
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
    ) -> None:
        if not api_key:
            raise ValueError("SendGridEmailSender needs an API key")
        self._api_key = api_key
        self._host = host
        self._from = {"email": from_email} | ({"name": from_name} if from_name else {})
        self._timeout = timeout
        self._sandbox_mode = sandbox_mode
        self._clients = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sendgrid")

    def send(self, emails: Sequence[Email]) -> list[Outcome]:
        """Send every email; one Outcome each, in the order given. Invalid emails raise before any I/O."""
        require_unique_send_keys([e.send_key for e in emails])
        bodies = {e.send_key: self._request_body(e) for e in emails}
        futures = {key: self._pool.submit(self._post, key, body) for key, body in bodies.items()}
        return [futures[e.send_key].result() for e in emails]

    def close(self) -> None:
        """Wait for requests in flight and stop the worker threads."""
        self._pool.shutdown(wait=True)

    def _post(self, send_key: str, body: dict[str, Any]) -> Outcome:
        try:
            response = self._client().send(body)
        except SENDGRID_FAILURES as exc:
            return to_outcome(send_key, from_sendgrid(exc, time.time()))
        return Outcome(send_key, "accepted", provider_message_id=response.headers.get("X-Message-Id"))

    def _client(self) -> SendGridAPIClient:
        """This thread's client: python_http_client mutates one shared header dict on every request."""
        client: SendGridAPIClient | None = getattr(self._clients, "client", None)
        if client is None:
            client = SendGridAPIClient(api_key=self._api_key, host=self._host)
            client.client.timeout = self._timeout  # the SDK has no timeout unless told
            self._clients.client = client
        return client

    def _request_body(self, email: Email) -> dict[str, Any]:
        custom_args = {"send_key": email.send_key, "run_id": email.run_id}
        content = [
            {"type": kind, "value": value}
            for kind, value in (("text/plain", email.text), ("text/html", email.html))
            if value
        ]
        _check(email, custom_args, content)
        body: dict[str, Any] = {
            "personalizations": [{"to": [{"email": email.to}], "custom_args": custom_args}],
            "from": self._from,
            "subject": email.subject,
            "content": content,
        }
        if email.categories:
            body["categories"] = list(email.categories)
        if self._sandbox_mode:
            body["mail_settings"] = {"sandbox_mode": {"enable": True}}
        return body


def _check(email: Email, custom_args: dict[str, str], content: list[dict[str, str]]) -> None:
    """Refuse what SendGrid would refuse anyway, before the request, naming the send_key."""
    problems = []
    if not email.to.strip():
        problems.append("no recipient address")
    if not email.subject.strip():
        problems.append("empty subject")
    if not content:
        problems.append("neither text nor html content")
    if len(json.dumps(custom_args).encode()) >= _MAX_CUSTOM_ARGS_BYTES:
        problems.append(f"custom_args reach {_MAX_CUSTOM_ARGS_BYTES} bytes")
    if len(email.categories) > _MAX_CATEGORIES:
        problems.append(f"more than {_MAX_CATEGORIES} categories")
    if any(not c or len(c) > _MAX_CATEGORY_CHARS for c in email.categories):
        problems.append(f"a category is empty or longer than {_MAX_CATEGORY_CHARS} characters")
    if problems:
        raise ValueError(f"email {email.send_key!r} cannot be sent: {'; '.join(problems)}")
