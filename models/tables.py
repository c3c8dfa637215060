"""The engine's persistent state: runs, segment sizes, journey instances and transitions, the outbox.

Keys are deterministic (derived from the journey, user, entry time and node) so that a retried or replayed run
finds the rows it already wrote instead of adding twins; bulk writes go through SQLAlchemy Core.
"""

from datetime import datetime

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel

from models.utc import UTCDateTime


def _utc(*, nullable: bool = False, index: bool = False, primary_key: bool = False) -> Column:  # type: ignore[type-arg]
    return Column(UTCDateTime(), nullable=nullable, index=index, primary_key=primary_key)


class Run(SQLModel, table=True):
    """One engine run: what it saw (snapshot fingerprint, definition versions) and what it did (counts)."""

    __tablename__ = "run"

    run_id: str = Field(primary_key=True)
    flow_run_id: str | None = None
    as_of: datetime = Field(sa_column=_utc(index=True))
    dry_run: bool = False
    status: str = "running"
    started_at: datetime = Field(sa_column=_utc())
    finished_at: datetime | None = Field(default=None, sa_column=_utc(nullable=True))
    snapshot_fingerprint: str = ""
    definitions: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    counts: str = Field(default="{}", sa_column=Column(Text, nullable=False))


class SegmentSize(SQLModel, table=True):
    """A segment's size and churn at one as_of: the history behind size trends."""

    __tablename__ = "segment_size"

    segment: str = Field(primary_key=True)
    as_of: datetime = Field(sa_column=_utc(primary_key=True))
    run_id: str
    definition_version: str
    size: int
    entered: int
    exited: int


class JourneyInstance(SQLModel, table=True):
    """One user's pass through one journey version: where they are and when they may move on."""

    __tablename__ = "journey_instance"
    __table_args__ = (Index("ix_journey_instance_active", "journey", "status"),)

    instance_id: str = Field(primary_key=True)
    journey: str
    version: str
    user_id: str = Field(index=True)
    entered_at: datetime = Field(sa_column=_utc())
    node: str
    node_entered_at: datetime = Field(sa_column=_utc())
    due_at: datetime | None = Field(default=None, sa_column=_utc(nullable=True))
    status: str = "active"
    exit_reason: str | None = None
    steps: int = 0
    run_id: str


class JourneyTransition(SQLModel, table=True):
    """The history of every step: who moved from where to where, when, in which run, and why."""

    __tablename__ = "journey_transition"

    instance_id: str = Field(primary_key=True)
    step: int = Field(primary_key=True)
    journey: str = Field(index=True)
    user_id: str = Field(index=True)
    from_node: str | None = None
    to_node: str
    at: datetime = Field(sa_column=_utc())
    run_id: str
    reason: str


class OutboxMessage(SQLModel, table=True):
    """One message to one address, keyed by its send key: the ledger that makes each send happen once.

    status: planned -> claimed (written before the provider call) -> accepted | failed | retryable;
    or skipped at planning, with the reason.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_status", "status", "channel"),)

    send_key: str = Field(primary_key=True)
    run_id: str = Field(index=True)
    as_of: datetime = Field(sa_column=_utc(index=True))
    journey: str
    journey_version: str
    node: str
    instance_id: str
    user_id: str = Field(index=True)
    channel: str
    template: str
    recipient: str | None = None
    status: str
    reason: str | None = None
    transactional: bool = False  # outside frequency caps and quiet hours
    not_before: datetime | None = Field(default=None, sa_column=_utc(nullable=True))  # held by quiet hours
    attempts: int = 0
    provider_message_id: str | None = None
    error_code: str | None = None
    detail: str | None = None
    dispatched_run_id: str | None = None
