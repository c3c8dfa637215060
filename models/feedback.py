"""What providers tell us after a send: their events as received, the engagement facts, and the suppressions.

`provider_event` keeps every SendGrid Event Webhook event once, keyed by SendGrid's own `sg_event_id`, because
SendGrid retries a batch it thinks failed and a replayed batch must change nothing. The outbox stays the dispatch
ledger (`accepted` means SendGrid took the message, not that it arrived); what happened next lives here.
"""

from datetime import datetime

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel

from models.utc import UTCDateTime


def _utc(*, index: bool = False) -> Column:  # type: ignore[type-arg]
    return Column(UTCDateTime(), nullable=False, index=index)


class ProviderEvent(SQLModel, table=True):
    """One SendGrid webhook event as received: the raw object plus the fields we query by.

    `send_key` and `run_id` are the custom_args the sender attached (null for mail nudge did not send);
    `category` is a JSON array of text whether SendGrid sent one category as a string or several as an array.
    """

    __tablename__ = "provider_event"
    __table_args__ = (Index("ix_provider_event_received", "received_at", "event"),)

    sg_event_id: str = Field(primary_key=True)
    event: str
    email: str
    timestamp: datetime = Field(sa_column=_utc())
    send_key: str | None = Field(default=None, index=True)
    run_id: str | None = None
    category: str = Field(default="[]", sa_column=Column(Text, nullable=False))
    raw: str = Field(sa_column=Column(Text, nullable=False))
    received_at: datetime = Field(sa_column=_utc())


class DeliveryFact(SQLModel, table=True):
    """A message engagement fact about one of our sends.

    kind: received | opened | clicked | bounced | unsubscribed | spam_reported. One row per provider event (two
    opens of one email are two facts), so segments can count engagement. Only events that lead back to an outbox
    row become facts: the user is the outbox row's user.
    """

    __tablename__ = "delivery_fact"
    __table_args__ = (Index("ix_delivery_fact_user", "user_id", "kind", "ts"),)

    sg_event_id: str = Field(primary_key=True)
    send_key: str = Field(index=True)
    user_id: str
    kind: str
    ts: datetime = Field(sa_column=_utc())


class Suppression(SQLModel, table=True):
    """An address we must not send to again on a channel, why, and since when.

    reason: bounce | dropped | unsubscribe | group_unsubscribe | spamreport; email addresses are stored lower-case.
    The first event that suppressed an address stays its reason and date; later ones remain in `provider_event`.
    `event_id` names that event when the source has one (SendGrid's sg_event_id).
    """

    __tablename__ = "suppression"

    channel: str = Field(primary_key=True)
    address: str = Field(primary_key=True)
    reason: str
    source: str
    event_id: str | None = None
    since: datetime = Field(sa_column=_utc())
