"""The outbox ledger's transitions, each one short transaction: claim, mark sending, record, release.

Every write names the state it expects and the dispatcher that must hold the row (`claimed_by`), so two
dispatchers racing for a row never both send it: a claim takes only rows that are still claimable when it
commits, and only the dispatcher whose `sending` mark commits sends. Taking over a row another dispatcher
claimed but never marked is therefore safe at any time, and a run picks up what a crashed one left claimed.
A `sending` mark without an outcome is taken over only under the `resend` policy and only once it is old
(see `engine/dispatch_policy.py`).

Recipients found dead by a provider (FCM UNREGISTERED, an address SendGrid refuses) go into the suppression
list at once, and every not-yet-sent row to them is skipped in the same transaction; a claim skips rows to a
suppressed recipient too, so a recipient that died after planning is never sent to again.
"""

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl
from sqlalchemy import Engine, Table, and_, bindparam, case, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from engine.channels.registry import channel as channel_named
from engine.db import insert_new
from engine.dispatch_policy import (
    AMBIGUOUS_CODES,
    OUTCOME_UNKNOWN,
    DispatchPolicy,
    is_configuration_error,
    pauses_channel,
)
from engine.providers.messages import Outcome
from models.feedback import Suppression
from models.tables import OutboxMessage, ProviderPause

_OUTBOX: Table = OutboxMessage.__table__  # type: ignore[attr-defined]
_PAUSE: Table = ProviderPause.__table__  # type: ignore[attr-defined]
_SUPPRESSION: Table = Suppression.__table__  # type: ignore[attr-defined]
_C = _OUTBOX.c

CLAIM_COLUMNS = ("send_key", "user_id", "journey", "template", "recipient", "attempts", "error_code")
_CLAIM_SCHEMA = {
    "send_key": pl.String, "user_id": pl.String, "journey": pl.String, "template": pl.String,
    "recipient": pl.String, "attempts": pl.Int64, "error_code": pl.String,
}  # fmt: skip
# Suppression reasons that dispatch itself records, and the skip reason a row to such a recipient gets.
_DEAD_REASONS = ("unregistered", "invalid_recipient")
_NOT_YET_SENT = ("planned", "retryable", "claimed")

# The statements every wave runs, built once: building a Core statement costs more than running it on SQLite.
_NOW = bindparam("m_now", type_=_C.sending_at.type)
_MARK = (
    update(_OUTBOX)
    .where(
        _C.send_key.in_(bindparam("m_keys", expanding=True)),
        _C.status == "claimed",
        _C.claimed_by == bindparam("m_holder"),
        ~exists().where(_PAUSE.c.channel == bindparam("m_channel"), _PAUSE.c.until > _NOW),
    )
    .values(status="sending", sending_at=_NOW, attempts=_C.attempts + 1)
)
_MARKED = select(_C.send_key).where(
    _C.send_key.in_(bindparam("m_keys", expanding=True)),
    _C.status == "sending",
    _C.claimed_by == bindparam("m_holder"),
)
_RECORD = (
    update(_OUTBOX)
    .where(_C.send_key == bindparam("b_key"), _C.status == "sending", _C.claimed_by == bindparam("b_holder"))
    .values(
        status=bindparam("b_status"),
        attempts=bindparam("b_attempts"),
        next_attempt_at=bindparam("b_next", type_=_C.next_attempt_at.type),
        provider_message_id=bindparam("b_message_id"),
        error_code=bindparam("b_code"),
        detail=bindparam("b_detail"),
    )
)
_PAUSE_UNTIL = select(_PAUSE.c.until).where(_PAUSE.c.channel == bindparam("p_channel"))


@dataclass(frozen=True)
class Claim:
    """What one claim took: `rows` (CLAIM_COLUMNS, send-key order) and how many it skipped instead."""

    rows: pl.DataFrame
    skipped: int


@dataclass(frozen=True)
class Marked:
    """The keys this dispatcher marked `sending`, or none and the end of the provider's pause."""

    keys: frozenset[str]
    paused_until: datetime | None = None


@dataclass(frozen=True)
class Recorded:
    """What recording a wave's outcomes did.

    `statuses` counts what each outcome left its row as: accepted, failed, retryable, in_doubt, or
    configuration_error (left sendable); `skipped` counts other rows skipped for a dead recipient.
    """

    statuses: Counter[str]
    skipped: int
    paused_until: datetime | None
    alert: Outcome | None


def claim(
    engine: Engine,
    *,
    channel: str,
    dispatcher: str,
    run_id: str,
    as_of: datetime,
    now: datetime,
    policy: DispatchPolicy,
) -> Claim:
    """Take up to `policy.batch_size` sendable rows of `channel` for `dispatcher`.

    Due retries come first, then planned rows, then rows other dispatchers claimed but never marked, then
    (under `resend`) stale `sending` marks, which become `claimed` with error_code `outcome_unknown`.
    """
    kinds = _claimable(channel=channel, dispatcher=dispatcher, as_of=as_of, now=now, policy=policy)
    with engine.begin() as conn:
        keys: list[str] = []
        for kind in kinds:
            if len(keys) >= policy.batch_size:
                break
            query = select(_C.send_key).where(kind).order_by(_C.send_key).limit(policy.batch_size - len(keys))
            keys += conn.execute(query).scalars().all()
        if not keys:
            return Claim(pl.DataFrame(schema=_CLAIM_SCHEMA), 0)
        taken = conn.execute(
            update(_OUTBOX)
            .where(_C.send_key.in_(keys), or_(*kinds))
            .values(
                status="claimed",
                claimed_by=dispatcher,
                dispatched_run_id=run_id,
                error_code=case(
                    (_C.status == "sending", func.coalesce(_C.error_code, OUTCOME_UNKNOWN)), else_=_C.error_code
                ),
            )
            .returning(*(_C[name] for name in CLAIM_COLUMNS))
        ).all()
        rows = pl.DataFrame([tuple(row) for row in taken], schema=_CLAIM_SCHEMA, orient="row").sort("send_key")
        dead = _dead_recipients(conn, channel, rows.get_column("recipient").drop_nulls().to_list())
        skipped = 0
        if dead:
            hit = rows.filter(pl.col("recipient").is_in(list(dead)))
            for reason, keys_of_reason in _by_reason(hit, dead).items():
                skipped += _skip(conn, _C.send_key.in_(keys_of_reason), reason, _C.claimed_by == dispatcher)
            rows = rows.filter(~pl.col("recipient").is_in(list(dead)) | pl.col("recipient").is_null())
    return Claim(rows, skipped)


def mark_sending(engine: Engine, keys: Sequence[str], *, channel: str, dispatcher: str, now: datetime) -> Marked:
    """Commit the `sending` mark of `keys` (those this dispatcher still holds) before their requests go out.

    Nothing is marked while the channel is paused: the caller waits or stops.
    """
    with engine.begin() as conn:
        wanted = {"m_keys": list(keys), "m_holder": dispatcher}
        if conn.execute(_MARK, wanted | {"m_channel": channel, "m_now": now}).rowcount == len(keys):
            return Marked(frozenset(keys))  # the usual case in one statement: this runs before every wave
        until = _pause_until(conn, channel)
        if until is not None and until > now:
            return Marked(frozenset(), until)
        return Marked(frozenset(conn.execute(_MARKED, wanted).scalars()))


def record(
    engine: Engine,
    outcomes: Sequence[Outcome],
    *,
    channel: str,
    dispatcher: str,
    run_id: str,
    attempts: Mapping[str, int],
    recipients: Mapping[str, str | None],
    policy: DispatchPolicy,
    now: datetime,
) -> Recorded:
    """Record the outcomes of one wave (`attempts`: each row's requests, this one included), in one commit."""
    statuses: Counter[str] = Counter()
    rows = []
    for outcome in outcomes:
        status, label, tries, next_at = _transition(outcome, attempts[outcome.send_key], policy, now)
        statuses[label] += 1
        rows.append(
            {
                "b_key": outcome.send_key,
                "b_holder": dispatcher,
                "b_status": status,
                "b_attempts": tries,
                "b_next": next_at,
                "b_message_id": outcome.provider_message_id,
                "b_code": outcome.error_code,
                "b_detail": outcome.detail,
            }
        )
    dead = {
        recipients[o.send_key]: "unregistered" if o.error_code == "UNREGISTERED" else "invalid_recipient"
        for o in outcomes
        if o.invalid_recipient and recipients.get(o.send_key)
    }
    waits = [(now + timedelta(seconds=o.retry_after or 0.0), o.error_code or "") for o in outcomes if pauses_channel(o)]
    with engine.begin() as conn:
        if rows:
            conn.execute(_RECORD, rows)
        skipped = _bury(conn, channel, dead, now) if dead else 0
        paused_until = _extend_pause(conn, channel, max(waits), run_id) if waits else None
    alert = next((o for o in outcomes if is_configuration_error(o)), None)
    return Recorded(statuses, skipped, paused_until, alert)


def fail_unsent(engine: Engine, outcomes: Sequence[Outcome], *, dispatcher: str) -> None:
    """Fail claimed rows that never reached a provider (a template that does not render)."""
    if not outcomes:
        return
    with engine.begin() as conn:
        conn.execute(
            update(_OUTBOX)
            .where(_C.send_key == bindparam("b_key"), _C.status == "claimed", _C.claimed_by == dispatcher)
            .values(status="failed", error_code=bindparam("b_code"), detail=bindparam("b_detail")),
            [{"b_key": o.send_key, "b_code": o.error_code, "b_detail": o.detail} for o in outcomes],
        )


def release(engine: Engine, keys: Sequence[str], *, dispatcher: str) -> int:
    """Give back claimed rows this dispatcher will not send now: planned if never sent, else retryable."""
    if not keys:
        return 0
    with engine.begin() as conn:
        result = conn.execute(
            update(_OUTBOX)
            .where(_C.send_key.in_(keys), _C.status == "claimed", _C.claimed_by == dispatcher)
            .values(status=case((_C.attempts == 0, "planned"), else_="retryable"), claimed_by=None)
        )
        return result.rowcount or 0


def next_due(engine: Engine, *, channel: str, as_of: datetime, now: datetime) -> datetime | None:
    """The earliest later time a retryable row of `channel` becomes due, if any."""
    with engine.connect() as conn:
        due: datetime | None = conn.execute(
            select(func.min(_C.next_attempt_at)).where(
                _C.status == "retryable", _C.channel == channel, _C.as_of <= as_of, _C.next_attempt_at > now
            )
        ).scalar_one()
    return due


def paused_until(engine: Engine, channel: str) -> datetime | None:
    """Until when the provider behind `channel` asked us to wait, if it ever did."""
    with engine.connect() as conn:
        return _pause_until(conn, channel)


def in_doubt(engine: Engine, *, run_id: str) -> int:
    """Sends with no recorded outcome, except the wave `run_id` may have in flight right now.

    Under `resend` they are sent again by a later run once stale; under `hold` they wait for an operator.
    """
    with engine.connect() as conn:
        return conn.execute(
            select(func.count()).where(
                _C.status == "sending",
                or_(_C.dispatched_run_id.is_(None), _C.dispatched_run_id != run_id, _C.error_code.is_not(None)),
            )
        ).scalar_one()


def _claimable(
    *, channel: str, dispatcher: str, as_of: datetime, now: datetime, policy: DispatchPolicy
) -> list[ColumnElement[bool]]:
    """One condition per kind of claimable row, in the order they are taken."""
    mine = _C.channel == channel
    due = or_(_C.next_attempt_at.is_(None), _C.next_attempt_at <= now)
    kinds = [
        and_(mine, _C.status == "retryable", _C.as_of <= as_of, due),
        and_(mine, _C.status == "planned", _C.as_of <= as_of, or_(_C.not_before.is_(None), _C.not_before <= as_of)),
        and_(mine, _C.status == "claimed", or_(_C.claimed_by.is_(None), _C.claimed_by != dispatcher)),
    ]
    if policy.in_doubt == "resend":
        stale = now - timedelta(seconds=policy.in_doubt_after_seconds)
        kinds.append(and_(mine, _C.status == "sending", _C.sending_at <= stale, _C.attempts < policy.max_attempts))
    return kinds


def _transition(
    outcome: Outcome, attempts: int, policy: DispatchPolicy, now: datetime
) -> tuple[str, str, int, datetime | None]:
    """(new status, what to count it as, attempts to store, next attempt) for one outcome."""
    if outcome.status == "accepted":
        return "accepted", "accepted", attempts, None
    if is_configuration_error(outcome):  # our setup, not the message: sendable again, the attempt not counted
        return ("planned" if attempts <= 1 else "retryable"), "configuration_error", attempts - 1, None
    if outcome.status == "failed":
        return "failed", "failed", attempts, None
    if outcome.error_code in AMBIGUOUS_CODES and (policy.in_doubt == "hold" or attempts >= policy.max_attempts):
        return "sending", "in_doubt", attempts, None  # may have been delivered: never failed, never resent
    if attempts >= policy.max_attempts:
        return "failed", "failed", attempts, None
    return "retryable", "retryable", attempts, policy.next_attempt_at(outcome, attempts, now)


def _dead_recipients(conn: Connection, channel: str, recipients: Sequence[str]) -> dict[str, str]:
    """The recipients on the suppression list for `channel`, as given, with the skip reason they earn."""
    normalize = channel_named(channel).normalize
    forms: dict[str, list[str]] = {}
    for recipient in recipients:
        forms.setdefault(normalize(recipient), []).append(recipient)
    if not forms:
        return {}
    found = conn.execute(
        select(_SUPPRESSION.c.address, _SUPPRESSION.c.reason).where(
            _SUPPRESSION.c.channel == channel, _SUPPRESSION.c.address.in_(list(forms))
        )
    ).all()
    return {
        recipient: reason if reason in _DEAD_REASONS else "suppressed"
        for address, reason in found
        for recipient in forms[address]
    }


def _by_reason(rows: pl.DataFrame, dead: Mapping[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key, recipient in rows.select("send_key", "recipient").iter_rows():
        grouped.setdefault(dead[recipient], []).append(key)
    return grouped


def _bury(conn: Connection, channel: str, dead: Mapping[str, str], now: datetime) -> int:
    """Suppress dead recipients and skip every row to them that has not been sent; returns rows skipped."""
    spec = channel_named(channel)
    insert_new(
        conn,
        _SUPPRESSION,
        [
            {
                "channel": channel,
                "address": spec.normalize(recipient),
                "reason": reason,
                "source": spec.suppression_source,
                "event_id": None,
                "since": now,
            }
            for recipient, reason in dead.items()
        ],
    )
    skipped = 0
    for reason in set(dead.values()):
        forms = [spec.normalize(r) for r, why in dead.items() if why == reason]
        column = func.lower(_C.recipient) if spec.fold_case else _C.recipient
        skipped += _skip(conn, and_(_C.channel == channel, column.in_(forms)), reason, _C.status.in_(_NOT_YET_SENT))
    return skipped


def _skip(conn: Connection, which: ColumnElement[bool], reason: str, *guards: ColumnElement[bool]) -> int:
    result = conn.execute(
        update(_OUTBOX)
        .where(which, _C.status.in_(_NOT_YET_SENT), *guards)
        .values(status="skipped", reason=reason, claimed_by=None)
    )
    return result.rowcount or 0


def _pause_until(conn: Connection, channel: str) -> datetime | None:
    until: datetime | None = conn.execute(_PAUSE_UNTIL, {"p_channel": channel}).scalar()
    return until


def _extend_pause(conn: Connection, channel: str, wait: tuple[datetime, str], run_id: str) -> datetime | None:
    """Pause `channel` until `wait`'s time unless it already is for longer; returns the pause now in force."""
    until, code = wait
    statement: Any = (sqlite.insert if conn.dialect.name == "sqlite" else postgresql.insert)(_PAUSE)
    statement = statement.values(channel=channel, until=until, error_code=code, run_id=run_id)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=["channel"],
            set_={"until": statement.excluded.until, "error_code": code, "run_id": run_id},
            where=_PAUSE.c.until < statement.excluded.until,
        )
    )
    return _pause_until(conn, channel)
