"""Adaptive send experiments: each run's variant shares, drawn once before its journeys advance.

For every send node with `allocation: thompson` (`models.journeys.SendSpec`), at each as_of:

- Results: the experiment's users settled at as_of (`engine.experiments.settled_results`): assigned more than
  `goal.within` before it, so every conversion attributable to them has been seen. Adapting therefore starts one
  attribution window after the first assignments.
- Shares: min_share + (1 - k min_share) P(variant converts best), P estimated by Monte Carlo from Beta posteriors
  (`engine.stats.thompson.thompson_allocation`) with a Generator seeded by journey, node and as_of; before any
  user has settled, the send's starting shares (min_share each, the rest by weight).
- Exactly once: the shares are stored (`models.tables.VariantAllocation`) before the journeys advance, and a
  rerun, retry or replay of the as_of reads them back instead of drawing, whatever data arrived since. Processes
  computing the same as_of at once (shards) draw the same shares from the same state; the first write is kept.
  A dry run draws and stores nothing.
- Whom they apply to: users never assigned at the node, cut by the same sticky bucket as a split. A user assigned
  at an earlier run keeps that variant (`engine.journey_nodes.send_variants`): a re-entering user sees the
  treatment they saw before, and each user's outcome belongs to one variant.
- Winner: the experiment report applies the promotion rule (`engine.experiments`); the operator promotes.
"""

from datetime import datetime
from typing import Any

import polars as pl
from sqlalchemy import Engine

from engine.db import insert_new
from engine.experiments import (
    Experiment,
    allocation_history,
    assignments,
    experiment_rng,
    experiments_of,
    settled_results,
)
from engine.journey_nodes import ASSIGNED_SCHEMA, ThompsonShares
from engine.stats.thompson import thompson_allocation
from models.journeys import JourneyDefinition
from models.tables import VariantAllocation

_ALLOCATIONS = VariantAllocation.__table__  # type: ignore[attr-defined]


def thompson_experiments(journey: JourneyDefinition) -> list[Experiment]:
    """The journey's send experiments with adaptive allocation (the journey model requires a goal for them)."""
    return [experiment for experiment in experiments_of(journey) if experiment.thompson is not None]


def thompson_shares(
    database: Engine, journey: JourneyDefinition, *, events: pl.LazyFrame, as_of: datetime, run_id: str, store: bool
) -> ThompsonShares | None:
    """This run's shares of the journey's thompson send nodes and who was assigned at them before; None if it has
    none, so fixed experiments read nothing.

    Args:
        database: where assignments (the outbox) and drawn shares are.
        journey: the current definition.
        events: every user's events visible at as_of (all users, even for a shard: the shares are population-wide).
        as_of: the run's.
        run_id: recorded with shares drawn now.
        store: whether shares drawn now are stored (not in a dry run).
    """
    experiments = thompson_experiments(journey)
    if not experiments:
        return None
    shares = {
        experiment.node: _shares_at(database, experiment, events=events, as_of=as_of, run_id=run_id, store=store)
        for experiment in experiments
    }
    earlier = [_earlier_assignments(database, experiment, as_of=as_of) for experiment in experiments]
    return ThompsonShares(shares, pl.concat(earlier))


def _shares_at(
    database: Engine, experiment: Experiment, *, events: pl.LazyFrame, as_of: datetime, run_id: str, store: bool
) -> dict[str, float]:
    """The stored shares of this as_of, or new ones drawn (and stored unless told not to)."""
    stored = _stored(database, experiment, as_of)
    if stored is None:
        drawn = draw_shares(database, experiment, events=events, as_of=as_of)
        if not store:
            return {row["variant"]: row["share"] for row in drawn}
        with database.begin() as conn:
            insert_new(conn, _ALLOCATIONS, [row | {"run_id": run_id} for row in drawn])
        stored = _stored(database, experiment, as_of)
        assert stored is not None
    if set(stored) != set(experiment.weights):
        raise ValueError(
            f"{experiment.title}: the shares stored for {as_of:%Y-%m-%d %H:%M} are for variants {sorted(stored)}, "
            f"the definition now has {sorted(experiment.weights)}; rerun this as_of with the definitions it ran with"
        )
    return stored


def _stored(database: Engine, experiment: Experiment, as_of: datetime) -> dict[str, float] | None:
    history = allocation_history(database, experiment, as_of=as_of).filter(pl.col("as_of") == as_of)
    return dict(history.select("variant", "share").iter_rows()) if not history.is_empty() else None


def draw_shares(
    database: Engine, experiment: Experiment, *, events: pl.LazyFrame, as_of: datetime
) -> list[dict[str, Any]]:
    """One row per variant (`VariantAllocation` but the run id): the shares drawn from the settled results."""
    assert experiment.thompson is not None
    spec = experiment.thompson
    assigned = assignments(database, experiment, as_of=as_of)
    conversions, users = settled_results(assigned, events, experiment, as_of=as_of)
    variants = list(experiment.weights)
    shares: list[float] = [spec.starting_shares[variant] for variant in variants]
    chances: list[float | None] = [None] * len(variants)
    if sum(users) > 0:
        rng = experiment_rng(experiment, as_of, "allocation")
        drawn = thompson_allocation(conversions, users, rng=rng, floor=spec.min_share)
        shares, chances = [float(w) for w in drawn.weights], [float(p) for p in drawn.chance_to_be_best]
    return [
        {
            "journey": experiment.journey,
            "node": experiment.node,
            "as_of": as_of,
            "variant": variant,
            "share": share,
            "chance_to_be_best": chance,
            "users": count,
            "conversions": converted,
        }
        for variant, share, chance, count, converted in zip(variants, shares, chances, users, conversions, strict=True)
    ]


def _earlier_assignments(database: Engine, experiment: Experiment, *, as_of: datetime) -> pl.DataFrame:
    """`ASSIGNED_SCHEMA`: the users first assigned at the node by a run before this as_of."""
    return (
        assignments(database, experiment, as_of=as_of)
        .filter(pl.col("assigned_at") < as_of)
        .select(pl.lit(experiment.node).alias("node"), "user_id", pl.col("arm").alias("variant"))
        .cast(dict(ASSIGNED_SCHEMA))
    )
