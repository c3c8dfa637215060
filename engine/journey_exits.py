"""Exits checked at every run, from any node, before any instance moves.

In order (the first that applies wins):
1. `version_removed_node`: the instance rests at a node the current version no longer has. Node ids are the
   identity of steps across versions: in-flight instances continue on the current version from the node they
   are at (as Braze Canvas does after an edit; waits keep the due time they were given), and only those whose
   node is gone have nowhere to continue from.
2. The current version made the node an exit: the instance exits there with that node's reason.
3. `goal`: the conversion event happened within the attribution window since entry (its time is recorded).
4. Exit criteria (`exit_when`), in the order written: the first whose rule holds exits with its reason.
"""

import polars as pl

from engine.behaviour import Behaviour
from engine.journey_nodes import describe, exit_nodes, with_rule_features
from engine.journey_state import EXIT, MOMENT
from engine.journey_waits import goal_hits
from engine.rules import predicate
from models.journeys import ExitNode, JourneyDefinition

EXIT_SCHEMA = pl.Schema({"instance_id": pl.String, "next": pl.String, "exit_reason": pl.String, "reason": pl.String})


def early_exits(
    journey: JourneyDefinition,
    state: pl.DataFrame,
    *,
    users: pl.LazyFrame,
    behaviour: Behaviour,
    memberships: dict[str, pl.Series],
) -> pl.DataFrame:
    """`instance_id, next, exit_reason, reason, goal_at` for active instances that leave now, whatever node."""
    active = state.filter(pl.col("status") == "active")
    removed = active.filter(~pl.col("node").is_in(list(journey.nodes))).select(
        "instance_id",
        pl.lit(EXIT).alias("next"),
        pl.lit("version_removed_node").alias("exit_reason"),
        pl.format("node {} is not in this version", "node").alias("reason"),
    )
    now_exits = active.filter(pl.col("node").is_in(exit_nodes(journey)))
    became_exit = now_exits.select(
        "instance_id",
        pl.col("node").alias("next"),
        pl.col("node").replace_strict(_exit_reasons(journey), return_dtype=pl.String).alias("exit_reason"),
        pl.lit("the node became an exit in this version").alias("reason"),
    )
    found = [removed, became_exit]
    rest = active
    if not removed.is_empty() or not became_exit.is_empty():
        rest = active.join(pl.concat(found).select("instance_id"), on="instance_id", how="anti")
    goals = goal_hits(journey, rest, behaviour=behaviour)
    found.append(
        goals.select(
            "instance_id",
            pl.lit(EXIT).alias("next"),
            pl.lit("goal").alias("exit_reason"),
            pl.col("match_reason").alias("reason"),
        )
    )
    if not goals.is_empty():
        rest = rest.join(goals.select("instance_id"), on="instance_id", how="anti")
    if journey.exit_when and not rest.is_empty():
        found.append(_criteria_exits(journey, rest, users=users, behaviour=behaviour, memberships=memberships))
    exits = pl.concat([frame.select(EXIT_SCHEMA.names()) for frame in found])
    return exits.join(
        goals.select("instance_id", pl.col("matched_at").alias("goal_at")), on="instance_id", how="left"
    ).with_columns(pl.col("goal_at").cast(MOMENT))


def _criteria_exits(
    journey: JourneyDefinition,
    active: pl.DataFrame,
    *,
    users: pl.LazyFrame,
    behaviour: Behaviour,
    memberships: dict[str, pl.Series],
) -> pl.DataFrame:
    rules = [criterion.when for criterion in journey.exit_when]
    frame = with_rule_features(active, rules, users=users, behaviour=behaviour)
    code = pl.lit(None, pl.String)
    why = pl.lit(None, pl.String)
    for criterion in reversed(journey.exit_when):
        holds = predicate(criterion.when, as_of=behaviour.as_of, memberships=memberships)
        code = pl.when(holds).then(pl.lit(criterion.reason)).otherwise(code)
        said = f"exit criteria {criterion.reason}: {describe(criterion.when)}"
        why = pl.when(holds).then(pl.lit(said)).otherwise(why)
    return (
        frame.select("instance_id", pl.lit(EXIT).alias("next"), code.alias("exit_reason"), why.alias("reason"))
        .filter(pl.col("exit_reason").is_not_null())
        .collect()
    )


def _exit_reasons(journey: JourneyDefinition) -> dict[str, str]:
    return {node_id: node.exit for node_id, node in journey.nodes.items() if isinstance(node, ExitNode)}
