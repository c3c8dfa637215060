"""Bayesian comparisons: chance to beat control and expected loss, for conversion rates and for means.

Conversion rates get Beta posteriors (a Beta(1, 1) prior by default, conjugate to the binomial). For two arms
the chance to beat control and the expected loss have closed forms (Evan Miller 2015, "Formulas for Bayesian
A/B Testing", evanmiller.org/bayesian-ab-testing.html; Chris Stucchio 2015, "Bayesian A/B Testing at VWO");
for many arms, and for "chance to be best", a Monte Carlo over posterior draws from a seeded numpy Generator.
Means use a normal approximation to each arm's posterior (flat prior: mean ~ N(xbar, s^2 / n)).

Expected loss is what choosing an arm costs, on average over the posterior, if it is in fact worse: in the
metric's own units (conversion-rate points for rates), so a threshold for it reads "at most 0.1 point".
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.stats.distributions import log_beta, normal_cdf, normal_pdf
from engine.stats.samples import Moments


@dataclass(frozen=True)
class BetaPosterior:
    """A Beta(alpha, beta) posterior for a conversion rate."""

    alpha: float
    beta: float

    @classmethod
    def from_counts(cls, conversions: int, users: int, prior: tuple[float, float] = (1.0, 1.0)) -> "BetaPosterior":
        """The posterior after `conversions` of `users` from a Beta(prior) prior."""
        if users < 0 or not 0 <= conversions <= users:
            raise ValueError(f"need 0 <= conversions <= users, got {conversions} of {users}")
        return cls(prior[0] + conversions, prior[1] + users - conversions)

    @property
    def mean(self) -> float:
        """The posterior mean alpha / (alpha + beta)."""
        return self.alpha / (self.alpha + self.beta)


@dataclass(frozen=True)
class BayesComparison:
    """A variant against control: P(variant > control) and the expected loss of either choice."""

    chance_to_beat_control: float
    expected_loss_variant: float  # E[max(control - variant, 0)]: the cost of shipping the variant
    expected_loss_control: float  # E[max(variant - control, 0)]: the cost of keeping control


@dataclass(frozen=True)
class MonteCarloComparison:
    """Posterior summaries of k arms from joint draws; tuples are indexed like the arms given."""

    chance_to_be_best: tuple[float, ...]
    chance_to_beat_control: tuple[float, ...]
    expected_loss_vs_control: tuple[float, ...]  # E[max(control - arm, 0)]
    expected_loss_vs_best: tuple[float, ...]  # E[max_j p_j - arm]: the cost of choosing the arm over all
    draws: int


def prob_greater(x: BetaPosterior, y: BetaPosterior) -> float:
    """P(X > Y) for independent X ~ Beta(x), Y ~ Beta(y), by Evan Miller's closed form.

    P(X > Y) = sum_{i=0}^{x.alpha - 1} B(y.alpha + i, x.beta + y.beta) / ((x.beta + i) B(1 + i, x.beta)
    B(y.alpha, y.beta)), which needs an integer x.alpha; by symmetry the sum can run over y.alpha instead, so
    it takes the shorter integer one. Terms are built by their ratio, (y.alpha + i)(x.beta + i) /
    ((y.alpha + x.beta + y.beta + i)(1 + i)), in logs, so a hundred thousand conversions cost a few ms.
    """
    x_int = float(x.alpha).is_integer()
    y_int = float(y.alpha).is_integer()
    if not (x_int or y_int):
        raise ValueError("the closed form needs an integer alpha on one side (integer prior and counts)")
    if x_int and (not y_int or x.alpha <= y.alpha):
        return _miller_sum(x, y)
    return 1.0 - _miller_sum(y, x)


def expected_loss(chosen: BetaPosterior, other: BetaPosterior) -> float:
    """E[max(Other - Chosen, 0)]: what choosing `chosen` costs when `other` is better (Stucchio 2015).

    E[max(O - C, 0)] = E[O 1{O > C}] - E[C 1{O > C}], and x f_Beta(a, b)(x) = a / (a + b) f_Beta(a + 1, b)(x),
    so it is mean(O) P(O+ > C) - mean(C) P(O > C+), where + adds one to alpha.
    """
    other_plus = BetaPosterior(other.alpha + 1.0, other.beta)
    chosen_plus = BetaPosterior(chosen.alpha + 1.0, chosen.beta)
    loss = other.mean * prob_greater(other_plus, chosen) - chosen.mean * prob_greater(other, chosen_plus)
    return max(loss, 0.0)


def beta_comparison(control: BetaPosterior, variant: BetaPosterior) -> BayesComparison:
    """Chance to beat control and both expected losses for two conversion rates, in closed form."""
    return BayesComparison(
        chance_to_beat_control=prob_greater(variant, control),
        expected_loss_variant=expected_loss(variant, control),
        expected_loss_control=expected_loss(control, variant),
    )


def normal_comparison(control: Moments, variant: Moments) -> BayesComparison:
    """The same for means, with normal posteriors: D = variant - control ~ N(d, s_c^2/n_c + s_v^2/n_v).

    P(D > 0) = Phi(d / s), and the expected losses are the normal partial expectations
    E[max(-D, 0)] = s phi(d/s) - d Phi(-d/s), E[max(D, 0)] = s phi(d/s) + d Phi(d/s) (Winkler, Roodman &
    Britney 1972, "The Determination of Partial Moments", Management Science 19(3)).
    """
    d = variant.mean - control.mean
    s = math.sqrt(control.variance / control.n + variant.variance / variant.n)
    if s == 0.0:
        return BayesComparison(0.5 if d == 0 else float(d > 0), max(-d, 0.0), max(d, 0.0))
    z = d / s
    return BayesComparison(
        chance_to_beat_control=normal_cdf(z),
        expected_loss_variant=s * normal_pdf(z) - d * normal_cdf(-z),
        expected_loss_control=s * normal_pdf(z) + d * normal_cdf(z),
    )


def beta_monte_carlo(
    posteriors: Sequence[BetaPosterior],
    *,
    rng: np.random.Generator,
    control: int = 0,
    draws: int = 100_000,
) -> MonteCarloComparison:
    """Summaries of k arms from `draws` joint posterior draws (numpy's Beta sampler, the given Generator).

    Monte Carlo error is about sqrt(p (1 - p) / draws): 0.0016 at worst for 100,000 draws.
    """
    if not posteriors:
        raise ValueError("need at least one arm")
    alphas = np.array([p.alpha for p in posteriors], dtype=float)
    betas = np.array([p.beta for p in posteriors], dtype=float)
    samples = rng.beta(alphas, betas, size=(draws, len(posteriors)))
    best = samples.max(axis=1, keepdims=True)
    baseline = samples[:, [control]]
    counts = np.bincount(samples.argmax(axis=1), minlength=len(posteriors))
    return MonteCarloComparison(
        chance_to_be_best=tuple(float(c) / draws for c in counts),
        chance_to_beat_control=tuple(float(v) for v in (samples > baseline).mean(axis=0)),
        expected_loss_vs_control=tuple(float(v) for v in np.maximum(baseline - samples, 0.0).mean(axis=0)),
        expected_loss_vs_best=tuple(float(v) for v in (best - samples).mean(axis=0)),
        draws=draws,
    )


def _miller_sum(x: BetaPosterior, y: BetaPosterior) -> float:
    """Evan Miller's sum for P(X > Y), over i < x.alpha (an integer)."""
    terms = int(x.alpha)
    i = np.arange(terms - 1, dtype=float)
    log_ratios = np.log(y.alpha + i) + np.log(x.beta + i) - np.log(y.alpha + x.beta + y.beta + i) - np.log1p(i)
    log_first = log_beta(y.alpha, x.beta + y.beta) - log_beta(y.alpha, y.beta)
    logs = log_first + np.concatenate(([0.0], np.cumsum(log_ratios)))
    return float(min(1.0, np.exp(logs).sum()))
