"""Adaptive allocation for a send node's variants: Thompson sampling with an exploration floor, and the rule
for promoting a winner.

Thompson sampling sends each user to an arm with the posterior probability that the arm is the best
(Thompson 1933, Biometrika 25; "randomized probability matching", Scott 2010, Applied Stochastic Models in
Business and Industry 26(6)). A batch engine allocates a run's traffic at once, so the per-user draw becomes
allocation weights equal to those probabilities, estimated by Monte Carlo from Beta posteriors (Chapelle &
Li 2011, "An Empirical Evaluation of Thompson Sampling", NeurIPS, found batched updates cost little). Every
arm keeps at least `floor` of the traffic, so an arm that started unlucky can still recover and the
experiment's estimates for it keep improving; the rest is shared by the probabilities.

Promotion. An arm is promoted (gets all traffic, the experiment ends) only when all of these hold:
- its chance to be best is at least `min_chance_to_be_best` (0.95);
- its expected loss against the best arm, E[max_j p_j - p_arm], is at most `max_expected_loss`
  (0.001: a tenth of a conversion-rate point), so a near-tie is settled by its small cost, not by noise;
- every arm has at least `min_users_per_arm` users (1,000), so early luck on a handful of users never wins.
The chance alone is not enough: with a tiny difference it hovers near 0.5 forever while the loss is already
negligible, and with a large but uncertain one it can touch 0.95 early while the loss is still large.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.stats.bayesian import BetaPosterior, beta_monte_carlo


@dataclass(frozen=True)
class Allocation:
    """Each arm's chance to be best and its share of the next run's traffic (shares sum to one)."""

    chance_to_be_best: tuple[float, ...]
    weights: tuple[float, ...]


@dataclass(frozen=True)
class PromotionRule:
    """The thresholds of the winner-promotion rule (see the module docstring)."""

    min_chance_to_be_best: float = 0.95
    max_expected_loss: float = 0.001
    min_users_per_arm: int = 1000


@dataclass(frozen=True)
class Promotion:
    """The decision: the arm to promote (its index) or None, and the figures it rests on."""

    winner: int | None
    leader: int
    chance_to_be_best: float
    expected_loss: float
    reason: str


def thompson_allocation(
    conversions: Sequence[int],
    users: Sequence[int],
    *,
    rng: np.random.Generator,
    floor: float = 0.05,
    draws: int = 20_000,
    prior: tuple[float, float] = (1.0, 1.0),
) -> Allocation:
    """Allocation weights floor + (1 - k floor) P(arm is best); deterministic for a given Generator state."""
    k = len(users)
    if k < 2 or len(conversions) != k:
        raise ValueError(f"need matching conversions and users for two or more arms, got {conversions}, {users}")
    if not 0.0 <= floor * k <= 1.0:
        raise ValueError(f"a floor of {floor} for {k} arms leaves no traffic to allocate")
    posteriors = [BetaPosterior.from_counts(c, n, prior) for c, n in zip(conversions, users, strict=True)]
    best = beta_monte_carlo(posteriors, rng=rng, draws=draws).chance_to_be_best
    share = 1.0 - floor * k
    return Allocation(best, tuple(floor + share * p for p in best))


def promotion_decision(
    conversions: Sequence[int],
    users: Sequence[int],
    *,
    rng: np.random.Generator,
    rule: PromotionRule = PromotionRule(),
    draws: int = 100_000,
    prior: tuple[float, float] = (1.0, 1.0),
) -> Promotion:
    """Apply `rule` to the arms' posteriors: promote the leader only if every condition holds."""
    if len(users) < 2 or len(conversions) != len(users):
        raise ValueError(f"need matching conversions and users for two or more arms, got {conversions}, {users}")
    posteriors = [BetaPosterior.from_counts(c, n, prior) for c, n in zip(conversions, users, strict=True)]
    summary = beta_monte_carlo(posteriors, rng=rng, draws=draws)
    leader = int(np.argmax(summary.chance_to_be_best))
    chance = summary.chance_to_be_best[leader]
    loss = summary.expected_loss_vs_best[leader]
    if min(users) < rule.min_users_per_arm:
        reason = f"an arm has {min(users)} users, fewer than {rule.min_users_per_arm}"
    elif chance < rule.min_chance_to_be_best:
        reason = f"the leader's chance to be best is {chance:.3f}, below {rule.min_chance_to_be_best}"
    elif loss > rule.max_expected_loss:
        reason = f"the leader's expected loss is {loss:.5f}, above {rule.max_expected_loss}"
    else:
        return Promotion(leader, leader, chance, loss, "every condition holds")
    return Promotion(None, leader, chance, loss, reason)
