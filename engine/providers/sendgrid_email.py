"""Emails through the SendGrid SDK: one POST /v3/mail/send per email, a few in flight at once."""

import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sendgrid import SendGridAPIClient

from engine.providers.errors import SENDGRID_FAILURES, InvalidMessageError, from_sendgrid, to_outcome
from engine.providers.limits import sendgrid_request_problems
from engine.providers.messages import Email, Outcome, require_unique_send_keys


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
        """Send every email; one Outcome each, in the order given.

        An email that breaks a SendGrid limit (see `limits`) is not sent: its Outcome is `failed` with
        error_code "invalid_message" and a detail naming it, and the others go out as usual. A repeated
        send_key raises ValueError before any I/O: outcomes could not be told apart.
        """
        require_unique_send_keys([e.send_key for e in emails])
        prepared = [(e.send_key, self._prepare(e)) for e in emails]
        pending = [
            self._pool.submit(self._post, key, body) if isinstance(body, dict) else body for key, body in prepared
        ]
        return [p if isinstance(p, Outcome) else p.result() for p in pending]

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

    def _prepare(self, email: Email) -> dict[str, Any] | Outcome:
        """The request body for `email`, or its failed Outcome when SendGrid would refuse the request."""
        body = self._request_body(email)
        problems = _email_problems(email) + sendgrid_request_problems(body)
        if problems:
            return to_outcome(email.send_key, InvalidMessageError(email.send_key, "email", problems))
        return body

    def _request_body(self, email: Email) -> dict[str, Any]:
        custom_args = {"send_key": email.send_key, "run_id": email.run_id}
        content = [
            {"type": kind, "value": value}
            for kind, value in (("text/plain", email.text), ("text/html", email.html))
            if value
        ]
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
