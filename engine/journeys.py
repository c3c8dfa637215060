"""Run a journey for one as_of, for the whole population at once: entries, exits, then every instance advanced.

`run_journey` is pure: the journey's known instances in, the instances this run created or moved, their
transitions and the sends they planned out. Its parts live beside it: `journey_entry` (who enters),
`journey_exits` (goal, exit criteria and version changes, checked every run from any node), `journey_waits`
(wait-for and goal events), `journey_nodes` (what each node does), `journey_clock` (local times of day).

Timing. Every transition of a run happens at the run's `as_of`. A wait is timed from the moment the instance
arrived at its node, which is the as_of of the run that moved it there: a delay of 1d entered at as_of is left
by the first run at or after as_of + 1d. A wait-for counts events strictly after arrival and before the deadline
(arrival + timeout), and nothing at or after as_of is visible; a segment wait holds at a run after the arrival
run, up to the run at the deadline, where the user is in the segment. The timed-out exit is taken at the first
run at or after the deadline, unless what was awaited came before it (events by their time: a late run decides right).
Within a run an instance keeps moving through nodes that take no time (branch, split, send, exit, a delay until a
date already passed) until it waits or exits: a bounded fixpoint, since the definition admits no loop in which
nothing takes time.

Versions. A journey's version is the content hash of its file; an instance records the version it entered on
and each transition the version that took it. In-flight instances follow the current version from the node they
rest at (node ids are the identity of steps, as in Braze Canvas after an edit): they keep the due time their wait
was given (a changed delay applies to later arrivals; a node that is no longer a wait is left at the next run),
and exit with reason `version_removed_node` when their node no longer exists. Messages carry the version that
planned them. Old versions are not kept, so "finish on the version you entered" is not on offer.

Status (applied by the caller, see `runs_live`): draft never runs live, paused and archived journeys are not run
at all (paused instances stay where they are; elapsed waits move at once on resume). Outside starts_at .. ends_at
a journey takes no new entries while in-flight instances finish (applied here).

Determinism. Instance ids, steps and send keys are derived from the journey, user, entry time, key and path, so
rerunning the same as_of over the state the first run left produces no transition at all, and over the state
before it the very same rows. Nothing here reads the database or the clock: a simulation calls `run_journey` run
after run with the state kept in memory (as `tests/journey_harness.Runner` does). What adaptive send experiments
need from earlier runs (this run's shares, who was assigned what) comes in as `thompson` (see `engine.allocation`).
"""

import polars as pl

from engine.behaviour import Behaviour
from engine.journey_entry import enter
from engine.journey_exits import early_exits
from engine.journey_nodes import ThompsonShares, arrive, exit_nodes, plan_sends, step, waiting_nodes
from engine.journey_state import (
    INSTANCE_SCHEMA,
    KNOWN_SCHEMA,
    MOMENT,
    SEND_SCHEMA,
    TRANSITION_SCHEMA,
    Advance,
    concat_or_empty,
    moment,
    transitions,
)
from engine.journey_waits import MATCH_SCHEMA, wait_matches
from models.journeys import JourneyDefinition

__all__ = [
    "INSTANCE_SCHEMA",
    "KNOWN_SCHEMA",
    "SEND_SCHEMA",
    "TRANSITION_SCHEMA",
    "Advance",
    "advance",
    "enter",
    "run_journey",
    "runs_live",
]


def runs_live(journey: JourneyDefinition) -> bool:
    """Whether live runs touch the journey at all: only active ones (drafts are for simulation)."""
    return journey.status == "active"


def run_journey(
    journey: JourneyDefinition,
    version: str,
    *,
    entered: pl.Series | None = None,
    known: pl.DataFrame,
    active: pl.DataFrame,
    users: pl.LazyFrame,
    behaviour: Behaviour,
    memberships: dict[str, pl.Series],
    thompson: ThompsonShares | None = None,
) -> tuple[pl.DataFrame, Advance]:
    """One run of a journey: new entries, then every active instance (new ones included) advanced.

    Args:
        journey: the current definition.
        version: its version, recorded on new instances, transitions and sends.
        entered: users who entered the entry segment at this run (segment entries; ignored otherwise).
        known: every instance of the journey, any status or version (`KNOWN_SCHEMA`).
        active: the active instances (`INSTANCE_SCHEMA`).
        users: the users snapshot (attributes read by rules, `timezone`, delay dates).
        behaviour: events, rollups and deliveries visible at the run's as_of.
        memberships: members of every segment at as_of, by name.
        thompson: this run's shares of the journey's thompson send nodes and their earlier assignments; without
            it (a simulation) those nodes assign by their starting shares.

    Returns the new instances (for counting entries) and the run's whole result, entries included.
    """
    new, entry_transitions = enter(
        journey, version, entered=entered, known=known, users=users, behaviour=behaviour, memberships=memberships
    )
    moved = _advance(
        journey,
        pl.concat([active.select(INSTANCE_SCHEMA.names()), new]),
        users=users,
        behaviour=behaviour,
        memberships=memberships,
        version=version,
        thompson=thompson,
    )
    instances = pl.concat([new.join(moved.instances, on="instance_id", how="anti"), moved.instances])
    return new, _in_order(Advance(instances, pl.concat([entry_transitions, moved.transitions]), moved.sends))


def advance(
    journey: JourneyDefinition,
    active: pl.DataFrame,
    *,
    users: pl.LazyFrame,
    behaviour: Behaviour,
    memberships: dict[str, pl.Series],
    version: str | None = None,
    thompson: ThompsonShares | None = None,
) -> Advance:
    """Move every active instance as far as this run's as_of allows.

    `version` is the current definition's, recorded on transitions and sends (the instance's own by default);
    `thompson` as in `run_journey`.
    """
    return _in_order(
        _advance(
            journey,
            active,
            users=users,
            behaviour=behaviour,
            memberships=memberships,
            version=version,
            thompson=thompson,
        )
    )


def _in_order(result: Advance) -> Advance:
    """The result in key order, so that equal runs give equal frames (sorted once: a million rows' sort of
    text keys is a tenth of a run)."""
    return Advance(
        instances=result.instances.sort("instance_id"),
        transitions=result.transitions.sort("instance_id", "step"),
        sends=result.sends.sort("send_key"),
    )


def _advance(
    journey: JourneyDefinition,
    active: pl.DataFrame,
    *,
    users: pl.LazyFrame,
    behaviour: Behaviour,
    memberships: dict[str, pl.Series],
    version: str | None,
    thompson: ThompsonShares | None,
) -> Advance:
    """`advance` in no particular order."""
    as_of = behaviour.as_of
    state = _normalized(active)
    exits = early_exits(journey, state, users=users, behaviour=behaviour, memberships=memberships)
    leaving = state.join(exits, on="instance_id", suffix="_exit")
    exited = leaving.with_columns(
        pl.col("next").alias("node"),
        moment(as_of).alias("node_entered_at"),
        pl.lit(None, MOMENT).alias("due_at"),
        pl.lit("exited").alias("status"),
        pl.col("exit_reason_exit").alias("exit_reason"),
        (pl.col("steps") + 1).alias("steps"),
        pl.coalesce("goal_at_exit", "goal_at").alias("goal_at"),
    )
    moved = [exited.select(INSTANCE_SCHEMA.names())]
    steps = [transitions(leaving, at=as_of, version=version)]
    sends = []
    if not exits.is_empty():
        state = state.join(exits.select("instance_id"), on="instance_id", how="anti")
    matches = wait_matches(journey, state, behaviour=behaviour, memberships=memberships)
    state = _with_matches(state, matches)
    limit = len(journey.nodes) + 1  # no path of instant nodes is longer; one more for the wait left first
    frontier = state  # after the first pass only instances that just moved can be ready: the others' state is as it was
    for moves in range(limit + 1):
        ready = frontier.filter(_ready(journey, as_of))
        if ready.is_empty():
            break
        if moves == limit:
            raise AssertionError(f"journey {journey.name}: instances still moving after {limit} steps in one run")
        stepped = step(journey, ready, users=users, behaviour=behaviour, memberships=memberships, thompson=thompson)
        steps.append(transitions(stepped, at=as_of, version=version))
        sends.append(plan_sends(journey, stepped, version=version, thompson=thompson))
        arrived = stepped.with_columns(
            pl.col("next").alias("node"),
            moment(as_of).alias("node_entered_at"),
            (pl.col("steps") + 1).alias("steps"),
            *(pl.lit(None, dtype).alias(name) for name, dtype in MATCH_SCHEMA.items() if name != "instance_id"),
        ).select(frontier.columns)
        frontier = arrive(arrived, journey, users=users)
        moved.append(frontier.select(INSTANCE_SCHEMA.names()))
    return Advance(
        instances=concat_or_empty(moved, INSTANCE_SCHEMA).unique("instance_id", keep="last"),
        transitions=concat_or_empty(steps, TRANSITION_SCHEMA),
        sends=concat_or_empty(sends, SEND_SCHEMA),
    )


def _normalized(active: pl.DataFrame) -> pl.DataFrame:
    """The active instances in the instance schema; rows written before a column existed read as its default."""
    return (
        active.select(INSTANCE_SCHEMA.names())
        .filter(pl.col("status") == "active")
        .with_columns(pl.col("holdout").fill_null(False))
    )


def _with_matches(state: pl.DataFrame, matches: pl.DataFrame) -> pl.DataFrame:
    """The state with each instance's wait-for match (`matched_at`, `match_reason`), null where none."""
    if matches.is_empty():
        return state.with_columns(
            pl.lit(None, dtype).alias(name) for name, dtype in MATCH_SCHEMA.items() if name != "instance_id"
        )
    return state.join(matches, on="instance_id", how="left")


def _ready(journey: JourneyDefinition, as_of: object) -> pl.Expr:
    """Active, not at an exit, and either not waiting or done waiting (elapsed, or the awaited thing came)."""
    elapsed = (pl.col("due_at") <= as_of).fill_null(True)
    waiting = pl.col("node").is_in(waiting_nodes(journey)) & ~elapsed & pl.col("matched_at").is_null()
    return (pl.col("status") == "active") & ~pl.col("node").is_in(exit_nodes(journey)) & ~waiting
