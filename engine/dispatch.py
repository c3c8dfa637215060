"""Dispatch the outbox: claim, render, send, record, for one channel at a time.

The ledger is what keeps a message from being sent twice: a row is marked `claimed` by this run (a conditional
update, so two runs never both win it) and committed before its provider call; only then is it rendered and
sent, and its outcome recorded. A row found `claimed` by an earlier run is an ambiguous send (the process may
have died after the provider accepted it): it is never sent again automatically and is counted as in doubt.
A template that fails to render marks its row failed and is never sent.
"""

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl
from sqlalchemy import Engine, and_, bindparam, func, or_, select, update

from engine.behaviour import Behaviour
from engine.contexts import builder_for
from engine.providers.messages import Email, EmailSender, Outcome, Push, PushSender
from engine.render import TemplateRenderError, TemplateStore
from models.tables import OutboxMessage

_OUTBOX = OutboxMessage.__table__  # type: ignore[attr-defined]
SENDABLE = ("planned", "retryable")


@dataclass
class DispatchCounts:
    claimed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # accepted / failed / retryable / render_failed

    def as_dict(self) -> dict[str, int]:
        return {"claimed": self.claimed, **dict(sorted(self.outcomes.items()))}


@dataclass(frozen=True)
class DispatchPolicy:
    batch_size: int = 500
    max_attempts: int = 3  # per message, across runs; a retryable row beyond it becomes failed
    max_wait_seconds: float = 10.0  # the longest in-run wait for a provider's retry-after
    sleep: Callable[[float], None] = time.sleep


def dispatch_channel(
    engine: Engine,
    *,
    channel: str,
    run_id: str,
    behaviour: Behaviour,
    users: pl.LazyFrame,
    templates: TemplateStore,
    sender: EmailSender | PushSender,
    policy: DispatchPolicy = DispatchPolicy(),
) -> DispatchCounts:
    """Send every sendable message of `channel` planned at or before the run's as_of."""
    counts = DispatchCounts()
    while True:
        claimed = _claim(engine, channel=channel, run_id=run_id, as_of=behaviour.as_of, limit=policy.batch_size)
        if claimed.is_empty():
            break
        counts.claimed += claimed.height
        outcomes, wait = _send_batch(claimed, channel, run_id, behaviour, users, templates, sender)
        attempts = dict(claimed.select("send_key", "attempts").iter_rows())
        _record(engine, outcomes, max_attempts=policy.max_attempts, attempts=attempts)
        counts.outcomes.update("render_failed" if o.error_code == "template_error" else o.status for o in outcomes)
        if wait:
            policy.sleep(min(wait, policy.max_wait_seconds))
    return counts


def in_doubt(engine: Engine, *, run_id: str) -> int:
    """Rows left claimed by other runs: sends whose outcome nobody recorded."""
    with engine.connect() as conn:
        return conn.execute(
            select(func.count()).where(_OUTBOX.c.status == "claimed", _OUTBOX.c.dispatched_run_id != run_id)
        ).scalar_one()


def _claim(engine: Engine, *, channel: str, run_id: str, as_of: datetime, limit: int) -> pl.DataFrame:
    with engine.begin() as conn:
        keys = (
            conn.execute(
                select(_OUTBOX.c.send_key)
                .where(
                    _OUTBOX.c.status.in_(SENDABLE),
                    _OUTBOX.c.channel == channel,
                    _OUTBOX.c.as_of <= as_of,
                    or_(_OUTBOX.c.not_before.is_(None), _OUTBOX.c.not_before <= as_of),
                )
                .order_by(_OUTBOX.c.send_key)
                .limit(limit)
            )
            .scalars()
            .all()
        )
        if not keys:
            return pl.DataFrame()
        conn.execute(
            update(_OUTBOX)
            .where(_OUTBOX.c.send_key.in_(keys), _OUTBOX.c.status.in_(SENDABLE))
            .values(status="claimed", dispatched_run_id=run_id, attempts=_OUTBOX.c.attempts + 1)
        )
        rows = conn.execute(
            select(
                _OUTBOX.c.send_key, _OUTBOX.c.user_id, _OUTBOX.c.journey, _OUTBOX.c.template,
                _OUTBOX.c.recipient, _OUTBOX.c.attempts,
            ).where(
                _OUTBOX.c.send_key.in_(keys), _OUTBOX.c.status == "claimed", _OUTBOX.c.dispatched_run_id == run_id
            )
        ).all()  # fmt: skip
    return pl.DataFrame(
        [tuple(row) for row in rows],
        schema=["send_key", "user_id", "journey", "template", "recipient", "attempts"],
        orient="row",
    )


def _send_batch(
    claimed: pl.DataFrame,
    channel: str,
    run_id: str,
    behaviour: Behaviour,
    users: pl.LazyFrame,
    templates: TemplateStore,
    sender: EmailSender | PushSender,
) -> tuple[list[Outcome], float]:
    """Render each claimed row and send what rendered; returns outcomes and the longest retry-after."""
    outcomes: list[Outcome] = []
    messages: list[Email | Push] = []
    for (template,), rows in claimed.group_by("template", maintain_order=True):
        contexts = builder_for(str(template)).build(rows, users, behaviour)
        merged = rows.join(contexts, on="send_key", how="left")
        for row in merged.iter_rows(named=True):
            try:
                messages.append(_message(row, channel, run_id, templates))
            except TemplateRenderError as error:
                outcomes.append(Outcome(row["send_key"], "failed", error_code="template_error", detail=str(error)))
    if messages:
        outcomes.extend(sender.send(messages))  # type: ignore[arg-type]
    wait = max((o.retry_after or 0.0 for o in outcomes if o.status == "retryable"), default=0.0)
    return outcomes, wait


def _message(row: dict[str, Any], channel: str, run_id: str, templates: TemplateStore) -> Email | Push:
    context = {key: value for key, value in row.items() if key not in ("recipient", "attempts")}
    if channel == "email":
        email = templates.email(row["template"]).render(context)
        categories = (f"journey:{row['journey']}", f"template:{row['template']}")
        return Email(row["send_key"], run_id, row["recipient"], email.subject, email.html, email.text, categories)
    push = templates.push(row["template"]).render(context)
    data = {"journey": row["journey"], "template": row["template"]}
    return Push(row["send_key"], run_id, row["recipient"], push.title, push.body, data)


def _record(engine: Engine, outcomes: Sequence[Outcome], *, max_attempts: int, attempts: dict[str, int]) -> None:
    def status(outcome: Outcome) -> str:
        if outcome.status == "retryable" and attempts.get(outcome.send_key, 0) >= max_attempts:
            return "failed"
        return outcome.status

    rows = [
        {
            "key": o.send_key,
            "new_status": status(o),
            "message_id": o.provider_message_id,
            "code": o.error_code,
            "info": o.detail,
        }
        for o in outcomes
    ]
    if not rows:
        return
    with engine.begin() as conn:
        conn.execute(
            update(_OUTBOX)
            .where(and_(_OUTBOX.c.send_key == bindparam("key"), _OUTBOX.c.status == "claimed"))
            .values(
                status=bindparam("new_status"),
                provider_message_id=bindparam("message_id"),
                error_code=bindparam("code"),
                detail=bindparam("info"),
            ),
            rows,
        )
