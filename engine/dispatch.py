"""Dispatch the outbox for one channel: claim a batch, render it, send it in waves, record every outcome.

Rendering and sending are the channel's own (`engine.channels`): this loop is the same for every channel.

A batch of rows is claimed and rendered together, then goes out in waves of at most `wave_size` messages (as
many as the sender has in flight at once). Each wave is marked `sending` in one commit right before its
requests and recorded in one commit right after them, so a crash leaves at most one wave with an unknown
outcome; rows still `claimed` were never sent and the next run sends them. What happens to a wave whose
outcome is unknown is the `in_doubt` policy (`resend` by default, or `hold`), described with the retry and
waiting rules in `engine/dispatch_policy.py`; the ledger's transitions are in `engine/ledger.py`.

A template that fails to render marks its row failed and is never sent. A dead recipient is suppressed and
its other unsent rows skipped. A provider refusing our credentials or project (SENDER_ID_MISMATCH,
THIRD_PARTY_AUTH_ERROR, a 401) stops the channel for the run, leaves its messages sendable, and sets
`configuration_alert`; `raise_for_configuration` turns that into an error for the flow to surface. An optional
`pace(n)` runs before each wave of `n` messages, for a rate limit shared between runs. A sender that raises
instead of returning outcomes leaves its wave `sending`, in doubt, exactly as a crash would.
"""

import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import polars as pl
from sqlalchemy import Engine

from engine import ledger
from engine.behaviour import Behaviour
from engine.channels.channel import Claimed, Message, Sender
from engine.channels.registry import channel as channel_named
from engine.contexts import builder_for
from engine.dispatch_policy import AMBIGUOUS_CODES, DispatchPolicy
from engine.providers.errors import ConfigurationError
from engine.providers.messages import Outcome
from engine.render import TemplateRenderError, TemplateStore

__all__ = ["ConfigurationAlert", "DispatchCounts", "DispatchPolicy", "Pace", "dispatch_channel", "in_doubt",
           "raise_for_configuration"]  # fmt: skip

Pace = Callable[[int], None]
in_doubt = ledger.in_doubt


@dataclass
class DispatchCounts:
    """What one channel's dispatch did in a run.

    `outcomes`: accepted / failed / retryable / in_doubt / configuration_error / render_failed / skipped.
    `possible_duplicates`: messages sent again although an earlier send of theirs may have been accepted.
    `paused_until`: the channel stopped early because the provider asked for a longer wait than the run takes.
    """

    claimed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    possible_duplicates: int = 0
    paused_until: datetime | None = None
    configuration_alert: str | None = None

    def as_dict(self) -> dict[str, int | str]:
        counts: dict[str, int | str] = {"claimed": self.claimed}
        counts |= {name: n for name, n in sorted(self.outcomes.items()) if n}
        if self.possible_duplicates:
            counts["possible_duplicates"] = self.possible_duplicates
        if self.paused_until is not None:
            counts["paused_until"] = self.paused_until.isoformat()
        if self.configuration_alert is not None:
            counts["configuration_alert"] = self.configuration_alert
        return counts


class ConfigurationAlert(ConfigurationError):
    """A provider refused our credentials or project; the channel's messages wait, sendable, for the fix."""

    def __init__(self, alerts: Mapping[str, str]) -> None:
        detail = "; ".join(f"{channel} stopped: {alert}" for channel, alert in sorted(alerts.items()))
        super().__init__("configuration_alert", f"{detail}. Unsent messages stay sendable for the next run.")
        self.alerts = dict(alerts)


def raise_for_configuration(counts: Mapping[str, DispatchCounts]) -> None:
    """Raise ConfigurationAlert when any channel stopped on a configuration error."""
    alerts = {channel: c.configuration_alert for channel, c in counts.items() if c.configuration_alert}
    if alerts:
        raise ConfigurationAlert(alerts)


@dataclass(frozen=True)
class _Run:
    """What every step of one channel's dispatch needs."""

    engine: Engine
    channel: str
    run_id: str
    dispatcher: str
    policy: DispatchPolicy
    sender: Sender
    pace: Pace | None
    counts: DispatchCounts


def dispatch_channel(
    engine: Engine,
    *,
    channel: str,
    run_id: str,
    behaviour: Behaviour,
    users: pl.LazyFrame,
    templates: TemplateStore,
    sender: Sender,
    policy: DispatchPolicy,
    pace: Pace | None = None,
) -> DispatchCounts:
    """Send every sendable message of `channel` planned at or before the run's as_of."""
    # One identity per call, not per run: a Prefect retry of the same run must not mistake a dead attempt's
    # claims for its own.
    run = _Run(engine, channel, run_id, f"{run_id}:{channel}:{uuid.uuid4().hex[:12]}", policy, sender, pace,
               DispatchCounts())  # fmt: skip
    clock = policy.clock
    while True:
        now = clock.now()
        until = ledger.paused_until(engine, channel)
        if until is not None and until > now:
            if _wait(run, until - now):
                continue
            run.counts.paused_until = until
            break
        batch = ledger.claim(
            engine, channel=channel, dispatcher=run.dispatcher, run_id=run_id, as_of=behaviour.as_of, now=now,
            policy=policy,
        )  # fmt: skip
        run.counts.claimed += batch.rows.height
        _count(run.counts, "skipped", batch.skipped)
        if batch.rows.is_empty():
            if batch.skipped:
                continue
            due = ledger.next_due(engine, channel=channel, as_of=behaviour.as_of, now=now)
            if due is not None and _wait(run, due - now):
                continue
            break
        messages, failures = render_rows(batch.rows, channel, run_id, behaviour, users, templates)
        ledger.fail_unsent(engine, failures, dispatcher=run.dispatcher)
        _count(run.counts, "render_failed", len(failures))
        if not _send_waves(run, batch.rows, messages):
            break
    return run.counts


def _send_waves(run: _Run, rows: pl.DataFrame, messages: Sequence[Message]) -> bool:
    """Send a rendered batch wave by wave; False when the channel must stop for this run."""
    attempts: dict[str, int] = dict(rows.select("send_key", "attempts").iter_rows())
    recipients: dict[str, str | None] = dict(rows.select("send_key", "recipient").iter_rows())
    doubtful = set(rows.filter(pl.col("error_code").is_in(list(AMBIGUOUS_CODES))).get_column("send_key"))
    size = run.policy.wave_size
    for start in range(0, len(messages), size):
        wave = messages[start : start + size]
        if run.pace is not None:
            run.pace(len(wave))
        marked = _mark(run, [m.send_key for m in wave])
        if marked is None:
            ledger.release(run.engine, [m.send_key for m in messages[start:]], dispatcher=run.dispatcher)
            return False
        sendable = [m for m in wave if m.send_key in marked]
        if not sendable:
            continue  # another dispatcher took them
        run.counts.possible_duplicates += len(doubtful & marked)
        outcomes = run.sender.send(sendable)
        recorded = ledger.record(
            run.engine, outcomes, channel=run.channel, dispatcher=run.dispatcher, run_id=run.run_id,
            attempts={key: attempts[key] + 1 for key in marked}, recipients=recipients, policy=run.policy,
            now=run.policy.clock.now(),
        )  # fmt: skip
        run.counts.outcomes.update(recorded.statuses)
        _count(run.counts, "skipped", recorded.skipped)
        if recorded.alert is not None:
            run.counts.configuration_alert = f"{recorded.alert.error_code}: {recorded.alert.detail}"
            ledger.release(run.engine, [m.send_key for m in messages[start + size :]], dispatcher=run.dispatcher)
            return False
    return True


def _mark(run: _Run, keys: list[str]) -> frozenset[str] | None:
    """Mark `keys` sending, first sitting out a provider's pause if it is short; None when it is not."""
    clock = run.policy.clock
    while True:
        now = clock.now()
        marked = ledger.mark_sending(run.engine, keys, channel=run.channel, dispatcher=run.dispatcher, now=now)
        if marked.paused_until is None:
            return marked.keys
        if not _wait(run, marked.paused_until - now):
            run.counts.paused_until = marked.paused_until
            return None


def _count(counts: DispatchCounts, outcome: str, n: int) -> None:
    if n:
        counts.outcomes[outcome] += n


def _wait(run: _Run, delta: timedelta) -> bool:
    """Sleep through `delta` if the policy allows a wait that long; False when it does not."""
    seconds = delta.total_seconds()
    if seconds > run.policy.max_wait_seconds:
        return False
    run.policy.clock.sleep(seconds)
    return True


def render_rows(
    rows: pl.DataFrame,
    channel: str,
    run_id: str,
    behaviour: Behaviour,
    users: pl.LazyFrame,
    templates: TemplateStore,
) -> tuple[list[Message], list[Outcome]]:
    """Each claimed row rendered into a message by its channel, or a failed Outcome when its template does not
    render."""
    compose = channel_named(channel).compose
    messages: list[Message] = []
    failures: list[Outcome] = []
    for (template,), group in rows.group_by("template", maintain_order=True):
        contexts = builder_for(str(template)).build(group, users, behaviour)
        merged = group.join(contexts, on="send_key", how="left")
        for row in merged.iter_rows(named=True):
            try:
                messages.append(compose(_claimed(row, run_id), templates))
            except TemplateRenderError as error:
                failures.append(Outcome(row["send_key"], "failed", error_code="template_error", detail=str(error)))
    return messages, failures


def _claimed(row: dict[str, Any], run_id: str) -> Claimed:
    context = {key: value for key, value in row.items() if key not in ("recipient", "attempts", "error_code")}
    return Claimed(row["send_key"], run_id, row["recipient"], row["journey"], row["template"], context)
