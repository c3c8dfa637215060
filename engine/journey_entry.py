"""Who enters a journey at a run: the entry's candidates, filtered by the re-entry policy, as new instances.

Candidates per entry kind: the users who entered the entry segment at this run; the users (and keys) who
performed the entry event in the lookback; or, at the first run at or after a broadcast's time, everyone in
its segment. Each candidate is a *subject*: the user, or the user and key of a keyed event entry; a subject
never has two active instances, and the policy counts entries per subject:

- `after_exit` (default): again once the previous instance exited;
- `never`: once ever;
- `{every: 7d}`: after exit, and at least 7 days after the previous entry;
- `{times: 3}`: after exit, at most 3 entries in all (both limits may be combined).

History is the journey's, across versions. The instance id is a hash of journey, user, entry time and key, so
a rerun of the same as_of finds the instances it created and creates none. A held-out user enters like anyone
else, flagged, walks the same path and is sent nothing: the users whose MurmurHash3 bucket of
`journey-holdout:<journey>:<user_id>` (see `engine.rule_buckets`) is below the `holdout` percent, so a user is
in or out of a journey's holdout for good, whichever entry or key.
"""

from datetime import datetime

import polars as pl

from engine.behaviour import Behaviour, EventFilter
from engine.journey_nodes import arrive
from engine.journey_state import INSTANCE_SCHEMA, KNOWN_SCHEMA, MOMENT, TRANSITION_SCHEMA, moment
from engine.journey_waits import shown_instant
from engine.keys import key_expr
from engine.rule_buckets import bucket_expr
from models.journeys import BroadcastEntry, EventEntry, JourneyDefinition, ReentryLimits, SegmentEntry

CANDIDATE_SCHEMA = pl.Schema({"user_id": pl.String, "entry_key": pl.String, "reason": pl.String})


def enter(
    journey: JourneyDefinition,
    version: str,
    *,
    entered: pl.Series | None,
    known: pl.DataFrame,
    users: pl.LazyFrame,
    behaviour: Behaviour,
    memberships: dict[str, pl.Series],
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """New instances, arrived at the start node, and their entry transitions (step 0).

    `entered` holds the users who entered the entry segment at this run (segment entries only); `known` every
    instance of the journey (`KNOWN_SCHEMA`). Nobody enters outside the journey's starts_at .. ends_at.
    """
    as_of = behaviour.as_of
    known = known.select(KNOWN_SCHEMA.names())
    if not journey.accepts_entries(as_of):
        return pl.DataFrame(schema=INSTANCE_SCHEMA), pl.DataFrame(schema=TRANSITION_SCHEMA)
    history = subject_history(known)
    candidates = _candidates(
        journey, entered=entered, known=known, history=history, behaviour=behaviour, memberships=memberships
    )
    eligible = candidates.join(history, on=["user_id", "entry_key"], how="left", nulls_equal=True).filter(
        eligible_expr(journey, as_of)
    )
    parts = [pl.lit(journey.name), pl.col("user_id"), moment(as_of).dt.to_string("%+")]
    identity = key_expr(*parts) if journey.entry_key is None else key_expr(*parts, pl.col("entry_key"))
    fresh = eligible.with_columns(identity.alias("instance_id")).join(
        known.select("instance_id"), on="instance_id", how="anti"
    )
    held_out = bucket_expr(f"journey-holdout:{journey.name}") < journey.holdout
    instances = fresh.select(
        "instance_id",
        pl.lit(journey.name).alias("journey"),
        pl.lit(version).alias("version"),
        "user_id",
        "entry_key",
        moment(as_of).alias("entered_at"),
        pl.lit(journey.start).alias("node"),
        moment(as_of).alias("node_entered_at"),
        pl.lit(None, MOMENT).alias("due_at"),
        pl.lit("active").alias("status"),
        pl.lit(None, pl.String).alias("exit_reason"),
        pl.lit(0, pl.Int64).alias("steps"),
        (held_out if journey.holdout else pl.lit(False)).alias("holdout"),
        pl.lit(None, pl.String).alias("arm"),
        pl.lit(None, MOMENT).alias("goal_at"),
        "reason",
    )
    instances = arrive(instances, journey, users=users).sort("instance_id")
    transitions = instances.select(
        "instance_id",
        pl.lit(0, pl.Int64).alias("step"),
        "journey",
        "version",
        "user_id",
        pl.lit(None, pl.String).alias("from_node"),
        pl.col("node").alias("to_node"),
        pl.col("entered_at").alias("at"),
        pl.when(pl.col("holdout")).then(pl.format("{} (holdout)", "reason")).otherwise("reason").alias("reason"),
    )
    return instances.select(INSTANCE_SCHEMA.names()), transitions


def subject_history(known: pl.DataFrame) -> pl.DataFrame:
    """Per subject (`user_id`, `entry_key`): active now, entries so far, last entry, and when it last left."""
    exited = pl.col("status") != "active"
    return known.group_by("user_id", "entry_key").agg(
        (pl.col("status") == "active").any().alias("_active"),
        pl.len().alias("_entries"),
        pl.col("entered_at").max().alias("_last_entered"),
        pl.col("node_entered_at").filter(exited).max().alias("_last_left"),
    )


def eligible_expr(journey: JourneyDefinition, as_of: datetime) -> pl.Expr:
    """Over candidates joined with their subject's history: may this subject enter now?"""
    never_seen = pl.col("_entries").is_null()
    idle = ~pl.col("_active").fill_null(False)
    policy = journey.entry.reentry
    if policy == "never":
        return never_seen
    if policy == "after_exit":
        return idle
    assert isinstance(policy, ReentryLimits)
    allowed = idle
    if policy.every is not None:
        allowed &= (pl.col("_last_entered") <= as_of - policy.every).fill_null(True)
    if policy.times is not None:
        allowed &= pl.col("_entries").fill_null(0) < policy.times
    return allowed


def _candidates(
    journey: JourneyDefinition,
    *,
    entered: pl.Series | None,
    known: pl.DataFrame,
    history: pl.DataFrame,
    behaviour: Behaviour,
    memberships: dict[str, pl.Series],
) -> pl.DataFrame:
    as_of = behaviour.as_of
    match journey.entry:
        case SegmentEntry(segment=segment):
            users = entered if entered is not None else pl.Series([], dtype=pl.String)
            return _users(users, f"entered segment {segment}")
        case BroadcastEntry(broadcast=segment, at=at):
            if as_of < at or known.filter(pl.col("entered_at") >= at).height:
                return pl.DataFrame(schema=CANDIDATE_SCHEMA)
            members = memberships.get(segment, pl.Series([], dtype=pl.String))
            return _users(members, f"broadcast to segment {segment} scheduled at {shown_instant(at)}")
        case EventEntry() as entry:
            return event_candidates(entry, history, behaviour)
    raise TypeError(f"unknown entry {journey.entry!r}")


def event_candidates(entry: EventEntry, history: pl.DataFrame, behaviour: Behaviour) -> pl.DataFrame:
    """Subjects who performed the entry event in the lookback since they last left: their first such event.

    Events from before a subject last left the journey (or while it is in it) are spent: they started, or
    happened during, an earlier instance.
    """
    selection = EventFilter(entry.event, tuple(sorted((entry.where or {}).items())))
    key = pl.col("properties").str.json_path_match(f"$['{entry.key}']") if entry.key else pl.lit(None, pl.String)
    events = (
        behaviour.events.filter(selection.expr(), pl.col("ts") >= behaviour.as_of - entry.lookback)
        .select("user_id", key.alias("entry_key"), "ts")
        .filter(pl.col("entry_key").is_not_null() if entry.key else pl.lit(True))
        .collect()
    )
    firsts = (
        events.join(
            history.select("user_id", "entry_key", "_active", "_last_left"),
            on=["user_id", "entry_key"],
            how="left",
            nulls_equal=True,
        )
        .filter(~pl.col("_active").fill_null(False), (pl.col("ts") >= pl.col("_last_left")).fill_null(True))
        .group_by("user_id", "entry_key")
        .agg(pl.col("ts").min())
    )
    keyed = f" ({entry.key} {{}})" if entry.key else ""
    text = f"performed {entry.event} at {{}}{keyed}"
    shown = pl.col("ts").dt.to_string("%Y-%m-%d %H:%M:%S UTC")
    reason = pl.format(text, shown, "entry_key") if entry.key else pl.format(text, shown)
    return firsts.select("user_id", "entry_key", reason.alias("reason")).sort("user_id", "entry_key")


def _users(users: pl.Series, reason: str) -> pl.DataFrame:
    return (
        pl.DataFrame({"user_id": users.cast(pl.String)})
        .unique()
        .select("user_id", pl.lit(None, pl.String).alias("entry_key"), pl.lit(reason).alias("reason"))
    )
