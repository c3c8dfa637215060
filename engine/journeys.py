"""Advance every instance of a journey by one run, for the whole population at once.

`advance` is pure: the instances in, the instances after this run, their transitions and the sends they
planned out. Every transition of a run happens at the run's `as_of`; a delay entered at `as_of` is due at
`as_of + delay` and is left by the first run whose as_of has reached it. Within a run an instance keeps moving
through nodes that take no time (branch, send, exit) until it waits or exits: a bounded fixpoint, since the
definition admits no loop without a delay.

Because instance ids, steps and send keys are derived from the journey, user, entry time and path, rerunning the
same as_of over the state the first run left produces no transition at all, and over the state before it the
very same rows.
"""

import json
from dataclasses import dataclass
from datetime import datetime

import polars as pl
from pydantic import BaseModel

from engine.behaviour import Behaviour
from engine.features import with_features
from engine.keys import key_expr
from engine.rules import predicate, rule_features
from models.durations import format_duration
from models.journeys import BranchNode, DelayNode, ExitNode, JourneyDefinition, SendNode

INSTANCE_SCHEMA = pl.Schema(
    {
        "instance_id": pl.String,
        "journey": pl.String,
        "version": pl.String,
        "user_id": pl.String,
        "entered_at": pl.Datetime("us", "UTC"),
        "node": pl.String,
        "node_entered_at": pl.Datetime("us", "UTC"),
        "due_at": pl.Datetime("us", "UTC"),
        "status": pl.String,
        "exit_reason": pl.String,
        "steps": pl.Int64,
    }
)
TRANSITION_SCHEMA = pl.Schema(
    {
        "instance_id": pl.String,
        "step": pl.Int64,
        "journey": pl.String,
        "user_id": pl.String,
        "from_node": pl.String,
        "to_node": pl.String,
        "at": pl.Datetime("us", "UTC"),
        "reason": pl.String,
    }
)
SEND_SCHEMA = pl.Schema(
    {
        "send_key": pl.String,
        "instance_id": pl.String,
        "journey": pl.String,
        "version": pl.String,
        "user_id": pl.String,
        "node": pl.String,
        "channel": pl.String,
        "template": pl.String,
        "transactional": pl.Boolean,
        "priority": pl.Int64,
    }
)


@dataclass(frozen=True)
class Advance:
    instances: pl.DataFrame  # every instance this run created or moved, in its new state
    transitions: pl.DataFrame
    sends: pl.DataFrame


def enter(
    journey: JourneyDefinition,
    version: str,
    *,
    entered: pl.Series,
    known: pl.DataFrame,
    as_of: datetime,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """New instances for users who entered the entry segment, and their entry transitions.

    `known` holds this journey's instances that matter for re-entry (`user_id`, `status`, `instance_id`):
    a user with an active instance never enters twice; with `reentry: never`, nor after exiting. An instance
    already created for this very as_of (a rerun) is not created again.
    """
    candidates = pl.DataFrame({"user_id": entered}).with_columns(
        pl.lit(journey.name).alias("journey"), pl.lit(as_of).dt.cast_time_unit("us").alias("entered_at")
    )
    candidates = candidates.with_columns(
        key_expr(pl.col("journey"), pl.col("user_id"), pl.col("entered_at").dt.to_string("%+")).alias("instance_id")
    )
    blocking = known if journey.entry.reentry == "never" else known.filter(pl.col("status") == "active")
    fresh = candidates.join(blocking.select("user_id"), on="user_id", how="anti").join(
        known.select("instance_id"), on="instance_id", how="anti"
    )
    instances = fresh.select(
        "instance_id",
        "journey",
        pl.lit(version).alias("version"),
        "user_id",
        "entered_at",
        pl.lit(journey.start).alias("node"),
        pl.col("entered_at").alias("node_entered_at"),
        pl.lit(None, pl.Datetime("us", "UTC")).alias("due_at"),
        pl.lit("active").alias("status"),
        pl.lit(None, pl.String).alias("exit_reason"),
        pl.lit(0, pl.Int64).alias("steps"),
    )
    instances = _arrive(instances, journey, as_of)
    transitions = instances.select(
        "instance_id",
        pl.lit(0, pl.Int64).alias("step"),
        "journey",
        "user_id",
        pl.lit(None, pl.String).alias("from_node"),
        pl.col("node").alias("to_node"),
        pl.col("entered_at").alias("at"),
        pl.lit(f"entered segment {journey.entry.segment}").alias("reason"),
    )
    return instances.sort("instance_id"), transitions.sort("instance_id")


def advance(
    journey: JourneyDefinition,
    active: pl.DataFrame,
    *,
    users: pl.LazyFrame,
    behaviour: Behaviour,
    memberships: dict[str, pl.Series],
) -> Advance:
    """Move every active instance as far as this run's as_of allows."""
    as_of = behaviour.as_of
    state = active.select(INSTANCE_SCHEMA.names())
    moved: list[pl.DataFrame] = []
    transitions: list[pl.DataFrame] = []
    sends: list[pl.DataFrame] = []
    for _ in range(len(journey.nodes) + 1):
        ready = state.filter(_ready(journey, as_of))
        if ready.is_empty():
            break
        step = _step(journey, ready, users=users, behaviour=behaviour, memberships=memberships)
        transitions.append(
            step.select(
                "instance_id",
                (pl.col("steps") + 1).alias("step"),
                "journey",
                "user_id",
                pl.col("node").alias("from_node"),
                pl.col("next").alias("to_node"),
                pl.lit(as_of).dt.cast_time_unit("us").alias("at"),
                "reason",
            )
        )
        sends.append(_sends(journey, step))
        after = _arrive(
            step.with_columns(
                pl.col("next").alias("node"),
                pl.lit(as_of).dt.cast_time_unit("us").alias("node_entered_at"),
                (pl.col("steps") + 1).alias("steps"),
            ).select(INSTANCE_SCHEMA.names()),
            journey,
            as_of,
        )
        moved.append(after)
        state = pl.concat([state.join(after.select("instance_id"), on="instance_id", how="anti"), after])
    changed = pl.concat(moved).unique("instance_id", keep="last") if moved else pl.DataFrame(schema=INSTANCE_SCHEMA)
    return Advance(
        instances=changed.sort("instance_id"),
        transitions=_concat(transitions, TRANSITION_SCHEMA).sort("instance_id", "step"),
        sends=_concat(sends, SEND_SCHEMA).sort("send_key"),
    )


def run_journey(
    journey: JourneyDefinition,
    version: str,
    *,
    entered: pl.Series,
    known: pl.DataFrame,
    active: pl.DataFrame,
    users: pl.LazyFrame,
    behaviour: Behaviour,
    memberships: dict[str, pl.Series],
) -> tuple[pl.DataFrame, Advance]:
    """One run of a journey: new entries, then every active instance (new ones included) advanced.

    Returns the new instances (for counting entries) and the run's whole result, entries included.
    """
    new, entry_transitions = enter(journey, version, entered=entered, known=known, as_of=behaviour.as_of)
    moved = advance(journey, pl.concat([active, new]), users=users, behaviour=behaviour, memberships=memberships)
    instances = pl.concat([new.join(moved.instances, on="instance_id", how="anti"), moved.instances])
    return new, Advance(
        instances=instances.sort("instance_id"),
        transitions=pl.concat([entry_transitions, moved.transitions]).sort("instance_id", "step"),
        sends=moved.sends,
    )


def _ready(journey: JourneyDefinition, as_of: datetime) -> pl.Expr:
    delays = [node_id for node_id, node in journey.nodes.items() if isinstance(node, DelayNode)]
    exits = [node_id for node_id, node in journey.nodes.items() if isinstance(node, ExitNode)]
    waiting = pl.col("node").is_in(delays) & (pl.col("due_at") > as_of)
    return (pl.col("status") == "active") & ~pl.col("node").is_in(exits) & ~waiting


def _arrive(instances: pl.DataFrame, journey: JourneyDefinition, as_of: datetime) -> pl.DataFrame:
    """Set what arriving at a node implies: a due time at delays, the exit at exits."""
    due = pl.lit(None, pl.Datetime("us", "UTC"))
    exit_reason = pl.lit(None, pl.String)
    for node_id, node in journey.nodes.items():
        if isinstance(node, DelayNode):
            due = (
                pl.when(pl.col("node") == node_id)
                .then(pl.lit(as_of + node.delay).dt.cast_time_unit("us"))
                .otherwise(due)
            )
        elif isinstance(node, ExitNode):
            exit_reason = pl.when(pl.col("node") == node_id).then(pl.lit(node.exit)).otherwise(exit_reason)
    return instances.with_columns(
        due.alias("due_at"),
        exit_reason.alias("exit_reason"),
        pl.when(exit_reason.is_not_null()).then(pl.lit("exited")).otherwise(pl.lit("active")).alias("status"),
    )


def _step(
    journey: JourneyDefinition,
    ready: pl.DataFrame,
    *,
    users: pl.LazyFrame,
    behaviour: Behaviour,
    memberships: dict[str, pl.Series],
) -> pl.DataFrame:
    """For each ready instance, the node it moves to (`next`) and why (`reason`)."""
    branch_rules = [
        case.when for node in journey.nodes.values() if isinstance(node, BranchNode) for case in node.branch
    ]
    frame = ready.lazy()
    if branch_rules:
        subjects = (
            ready.lazy().join(users, on="user_id", how="left").with_columns(pl.col("instance_id").alias("subject_id"))
        )
        features = [feature for rule in branch_rules for feature in rule_features(rule)]
        frame = with_features(subjects, features, behaviour)
    next_node = pl.lit(None, pl.String)
    reason = pl.lit(None, pl.String)
    for node_id, node in journey.nodes.items():
        at = pl.col("node") == node_id
        match node:
            case DelayNode():
                next_node = pl.when(at).then(pl.lit(node.next)).otherwise(next_node)
                reason = pl.when(at).then(pl.lit(f"waited {format_duration(node.delay)}")).otherwise(reason)
            case SendNode():
                next_node = pl.when(at).then(pl.lit(node.next)).otherwise(next_node)
                reason = pl.when(at).then(pl.lit(f"planned {node.send.channel} {node.send.template}")).otherwise(reason)
            case BranchNode():
                chosen = pl.lit(node.otherwise)
                why = pl.lit("otherwise")
                for number, case in reversed(list(enumerate(node.branch, start=1))):
                    holds = predicate(case.when, as_of=behaviour.as_of, memberships=memberships)
                    chosen = pl.when(holds).then(pl.lit(case.next)).otherwise(chosen)
                    held = f"case {number} held: {_describe(case.when)}"
                    why = pl.when(holds).then(pl.lit(held)).otherwise(why)
                next_node = pl.when(at).then(chosen).otherwise(next_node)
                reason = pl.when(at).then(why).otherwise(reason)
    return (
        frame.with_columns(next_node.alias("next"), reason.alias("reason"))
        .select([*INSTANCE_SCHEMA.names(), "next", "reason"])
        .collect()
    )


def _sends(journey: JourneyDefinition, step: pl.DataFrame) -> pl.DataFrame:
    send_nodes = {node_id: node for node_id, node in journey.nodes.items() if isinstance(node, SendNode)}
    at_send = step.filter(pl.col("node").is_in(list(send_nodes)))
    channel = pl.lit(None, pl.String)
    template = pl.lit(None, pl.String)
    transactional = pl.lit(None, pl.Boolean)
    for node_id, node in send_nodes.items():
        at = pl.col("node") == node_id
        channel = pl.when(at).then(pl.lit(node.send.channel)).otherwise(channel)
        template = pl.when(at).then(pl.lit(node.send.template)).otherwise(template)
        transactional = pl.when(at).then(pl.lit(node.send.transactional)).otherwise(transactional)
    return at_send.select(
        key_expr(pl.col("instance_id"), pl.col("steps") + 1, pl.col("node")).alias("send_key"),
        "instance_id",
        "journey",
        "version",
        "user_id",
        "node",
        channel.alias("channel"),
        template.alias("template"),
        transactional.alias("transactional"),
        pl.lit(journey.priority, pl.Int64).alias("priority"),
    )


def _describe(rule: object) -> str:
    """A rule in its YAML flow form, compact enough for a transition's reason."""
    assert isinstance(rule, BaseModel)
    return json.dumps(rule.model_dump(mode="json", by_alias=True, exclude_none=True), separators=(",", ":"))


def _concat(frames: list[pl.DataFrame], schema: pl.Schema) -> pl.DataFrame:
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)
