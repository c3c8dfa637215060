"""The messages we hand to providers and what we learn back, independent of any SDK.

Every message carries the outbox's `send_key`. It travels to the provider (SendGrid custom_args, FCM data)
so webhooks and logs lead back to our outbox row, and each sender returns exactly one `Outcome` per
message with the same `send_key`: callers match results by key, never by position.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

OutcomeStatus = Literal["accepted", "retryable", "failed"]


@dataclass(frozen=True, slots=True)
class Email:
    """One individually rendered email to one recipient."""

    send_key: str
    run_id: str
    to: str
    subject: str
    html: str
    text: str
    categories: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Push:
    """One push notification to one FCM registration token.

    The sender adds `send_key` and `run_id` to `data`; `data` must not use those keys itself.
    """

    send_key: str
    run_id: str
    token: str
    title: str
    body: str
    data: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one send turned out.

    `error_code` is ours and stable (e.g. "sendgrid_429", "timeout", "UNREGISTERED") so that callers
    and dashboards can group on it; `detail` is for humans and may change. `retry_after` is in seconds
    and set only when the provider said how long to wait. `invalid_recipient` tells the caller to stop
    sending to this address or token.
    """

    send_key: str
    status: OutcomeStatus
    provider_message_id: str | None = None
    error_code: str | None = None
    detail: str | None = None
    retry_after: float | None = None
    invalid_recipient: bool = False


class EmailSender(Protocol):
    """Sends emails; one Outcome per input, never raising for a provider's answer about a message."""

    def send(self, emails: Sequence[Email]) -> list[Outcome]: ...


class PushSender(Protocol):
    """Sends pushes; one Outcome per input, never raising for a provider's answer about a message."""

    def send(self, pushes: Sequence[Push]) -> list[Outcome]: ...


def require_unique_send_keys(send_keys: Sequence[str]) -> None:
    """Refuse a batch that repeats a send_key: outcomes are matched by key, so a repeat is ambiguous."""
    seen: set[str] = set()
    for key in send_keys:
        if key in seen:
            raise ValueError(f"send_key {key!r} appears more than once in one batch")
        seen.add(key)
