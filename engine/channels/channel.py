"""What a channel is: everything the core needs to plan, render, send and account for one kind of message.

The core never names a channel. Planning asks each channel for its recipients, rendering asks it to turn a
claimed outbox row into a provider message, dispatch asks it for a sender, a wave size and a pacing limit, and
the suppression list asks how its addresses compare. `engine/channels/email.py` and `push.py` are the two
built-in channels written this way; `plugins/webhook_channel.py` is one written outside the core.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import polars as pl

from engine.providers.messages import Outcome
from engine.render import TemplateStore


class Message(Protocol):
    """Whatever a channel's sender takes: it only has to carry the outbox row's send key."""

    @property
    def send_key(self) -> str: ...


class Sender(Protocol):
    """Sends a wave of a channel's messages concurrently; exactly one Outcome per message, matched by send key.

    It never raises for a provider's answer about a message (that is an Outcome); it may raise for a bug, which
    leaves the wave in doubt exactly as a crash would. `close` releases its connections and threads.
    """

    def send(self, messages: Sequence[Any]) -> list[Outcome]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Claimed:
    """One claimed outbox row, ready to be rendered: `context` is what its template's context builder made."""

    send_key: str
    run_id: str
    recipient: str
    journey: str
    template: str
    context: Mapping[str, Any]


PlanRecipients = Callable[[pl.LazyFrame, pl.LazyFrame], pl.LazyFrame]
CheckTemplate = Callable[[TemplateStore, str, Mapping[str, Any]], str]
Compose = Callable[[Claimed, TemplateStore], Message]
BuildSender = Callable[[], Sender]


@dataclass(frozen=True)
class Channel:
    """A channel, as registered with `engine.channels.register_channel`.

    Attributes:
        name: what journeys (`send: {channel: ...}`), rules and the delivery policy call it; also the folder of
            its templates (`templates/<name>/<template>/`) and the `channel` column of the outbox.
        plan: `plan(sends, users)` gets this channel's planned sends (the outbox columns but `recipient`,
            `reason` and `status`) and the users snapshot, and returns them with `recipient` (String, the
            address) and `reason` (String: why the message cannot go, e.g. `no_consent`, or null). A channel
            that sends one message to several addresses returns a row per address, each with its own
            `send_key` (`address_key`); `skip_reason` builds the usual reasons. A user without an address
            still gets a row, skipped: the ledger accounts for every send a journey planned.
        check_template: `check_template(store, template, sample)` compiles the template and renders it with a
            sample context, raising `MessageTemplateError`; returns the template's version (a content hash).
            Definitions are refused before a run when it raises.
        compose: `compose(claimed, store)` renders a claimed row into the message its sender takes, raising
            `TemplateRenderError` when it cannot (the row fails and is never sent).
        build_sender: builds the sender from the environment, raising `ConfigurationError` naming the
            variable to set when it cannot.
        wave_size: messages handed to the sender at once, and so in doubt after a crash; overridden by
            `NUDGE_DISPATCH_<NAME>_WAVE_SIZE`.
        rate_limit: the Prefect global concurrency limit that paces it, when an operator created one.
        suppression_source: who stops an address, recorded on the suppression list (e.g. the provider).
        suppression_reason: the skip reason at planning of a message to a suppressed address.
        fold_case: addresses compare in any case (email) rather than exactly (tokens, ids).
    """

    name: str
    plan: PlanRecipients
    check_template: CheckTemplate
    compose: Compose
    build_sender: BuildSender
    wave_size: int
    rate_limit: str
    suppression_source: str
    suppression_reason: str = "suppressed"
    fold_case: bool = False

    def normalize(self, address: str) -> str:
        """The form an address is stored and compared in on the suppression list."""
        address = address.strip()
        return address.lower() if self.fold_case else address
