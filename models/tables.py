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
    """One pass of a user (and, for keyed event entries, one key) through a journey: where it is, when it may
    move on, and what it is part of (holdout, experiment arm); `version` is the version it entered on."""

    __tablename__ = "journey_instance"
    # Keyed by journey and user, then the instance (unique by itself, being a digest of journey, user, key and
    # entry): the readers ask for one journey's instances or one user's, and a run's instances, written in key
    # order, fill the table (its key's B-tree, without a rowid on SQLite) and the status index in one sweep each.
    # A separate index on the random instance_id or user_id would cost more to maintain than the whole table.
    __table_args__ = (Index("ix_journey_instance_active", "journey", "status"), {"sqlite_with_rowid": False})

    journey: str = Field(primary_key=True)
    user_id: str = Field(primary_key=True)
    instance_id: str = Field(primary_key=True)
    version: str
    entry_key: str | None = None  # e.g. the cart_id of a keyed event entry
    entered_at: datetime = Field(sa_column=_utc())
    node: str
    node_entered_at: datetime = Field(sa_column=_utc())
    due_at: datetime | None = Field(default=None, sa_column=_utc(nullable=True))  # a delay's end, a wait's deadline
    status: str = "active"
    exit_reason: str | None = None
    steps: int = 0
    holdout: bool = False  # entered, and is sent nothing: the journey's control group
    arm: str | None = None  # the last split arm taken
    goal_at: datetime | None = Field(default=None, sa_column=_utc(nullable=True))  # the conversion that ended it
    run_id: str


class JourneyTransition(SQLModel, table=True):
    """The history of every step: who moved from where to where, when, in which run, and why."""

    __tablename__ = "journey_transition"
    # Keyed by journey first: every reader asks for one journey's steps, and one user's path comes through the
    # user's instances. No other index and no rowid (SQLite): each step is one B-tree entry, which is most of
    # what writing a million steps costs.
    __table_args__ = {"sqlite_with_rowid": False}

    journey: str = Field(primary_key=True)
    instance_id: str = Field(primary_key=True)
    step: int = Field(primary_key=True)
    version: str | None = None  # the definition version that took the step
    user_id: str
    from_node: str | None = None
    to_node: str
    at: datetime = Field(sa_column=_utc())
    run_id: str
    reason: str


class OutboxMessage(SQLModel, table=True):
    """One message to one address, keyed by its send key: the ledger that makes each send happen once.

    status: planned -> claimed (taken by one dispatcher, rendered, not sent) -> sending (committed right before
    its provider request) -> accepted | failed | retryable (again sendable at `next_attempt_at`); or skipped,
    with the reason, at planning or when its recipient turns out dead. A row left `sending` has no known
    outcome: `engine/dispatch_policy.py` says when it is sent again. `attempts` counts provider requests.
    `engine/ledger.py` holds every transition.
    """

    __tablename__ = "outbox"
    # Each kind of claimable row of a channel comes in send-key order without a sort. Channel first: an index
    # led by status would tempt SQLite to scan every `claimed` row for a wave's update by send key.
    __table_args__ = (Index("ix_outbox_claim", "channel", "status", "send_key"),)

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
    variant: str | None = None  # the send experiment's variant, on skipped messages too (intent to treat)
    recipient: str | None = None
    status: str
    reason: str | None = None
    transactional: bool = False  # outside frequency caps and quiet hours
    not_before: datetime | None = Field(default=None, sa_column=_utc(nullable=True))  # held by quiet hours
    attempts: int = 0
    provider_message_id: str | None = None
    error_code: str | None = None
    detail: str | None = None
    dispatched_run_id: str | None = None  # the run that last claimed it
    claimed_by: str | None = None  # the dispatcher (one per channel and run) that holds the claim
    sending_at: datetime | None = Field(default=None, sa_column=_utc(nullable=True))  # the last sending mark
    next_attempt_at: datetime | None = Field(default=None, sa_column=_utc(nullable=True))  # when retryable again


class ProviderPause(SQLModel, table=True):
    """A provider asked us to wait: nothing goes out on `channel` before `until` (the dispatch clock, UTC).

    Written from a rate limit's X-RateLimit-Reset or a Retry-After that concerns the whole account, so that a
    rerun or a concurrent run waits as well as the run that was told; a longer wait extends it, a shorter one
    never shortens it.
    """

    __tablename__ = "provider_pause"

    channel: str = Field(primary_key=True)
    until: datetime = Field(sa_column=_utc())
    error_code: str
    run_id: str


class VariantAllocation(SQLModel, table=True):
    """One variant's share of the users a thompson send experiment (`allocation: thompson`) assigns at one as_of,
    drawn before that run's journeys advance: a rerun of the as_of reads it back instead of drawing again, and
    the experiment's report shows the history. `users` and `conversions` are the settled results it was drawn
    from; `chance_to_be_best` is null for the starting shares, drawn from no result."""

    __tablename__ = "variant_allocation"

    journey: str = Field(primary_key=True)
    node: str = Field(primary_key=True)
    as_of: datetime = Field(sa_column=_utc(primary_key=True))
    variant: str = Field(primary_key=True)
    share: float
    chance_to_be_best: float | None = None
    users: int
    conversions: int
    run_id: str
