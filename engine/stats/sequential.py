"""Always-valid inference for a difference in means or proportions, so that daily looks stay honest.

A fixed-horizon test looked at every day and stopped at the first p < 0.05 has a false-positive rate far
above 5% (the tests measure it). A confidence sequence instead covers the true difference at every look
simultaneously with probability 1 - alpha, so it may be checked daily and the experiment stopped whenever it
excludes zero.

This is the normal-mixture sequential probability ratio test (mSPRT) of Johari, Koomen, Pekelis & Walsh
("Always Valid Inference: Continuous Monitoring of A/B Tests", Operations Research 70(3), 2022), equivalently
the two-sided normal-mixture boundary of Howard, Ramdas, McAuliffe & Sekhon ("Time-uniform, nonparametric,
nonasymptotic confidence sequences", Annals of Statistics 49(2), 2021). For an estimate D of the difference
with variance V, mixing the likelihood ratio over effects theta ~ N(0, tau^2) gives

    Lambda = sqrt(V / (V + tau^2)) exp(tau^2 (D - theta0)^2 / (2 V (V + tau^2))),

a martingale under theta0; by Ville's inequality P(ever Lambda >= 1/alpha) <= alpha. The always-valid p-value
is min(1, 1/Lambda), and the confidence sequence is every theta0 with Lambda < 1/alpha:

    D +/- sqrt(V (V + tau^2) / tau^2 (2 log(1/alpha) + log((V + tau^2) / V))).

V is estimated from the data at each look (plug-in variances), which makes the guarantee asymptotic in the
sense of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas ("Time-uniform central limit theory and asymptotic
confidence sequences", Annals of Statistics, 2024): right once each arm has some hundreds of users.

The mixture variance tau^2. Any fixed choice is valid; it decides where the sequence is tightest. Writing
tau^2 = r V*, with V* the variance the estimate will have at the planned sample size, the width at the
planned size is smallest when r solves r = 2 log(1/alpha) + log(1 + r) (Howard et al. 2021 tune their rho
the same way; about 8.2 for alpha = 0.05). Since V shrinks like 1/n, V* = V n / n_planned, so
tau^2 = r V n / n_planned: scale-free, set by one number the experiment has anyway, its planned size. It
must be fixed before looking, not set to the current size (that would be the naive test with a wider z).
"""

import math
from dataclasses import dataclass

import numpy as np

from engine.stats.samples import Interval, Moments


@dataclass(frozen=True)
class SequentialResult:
    """The confidence sequence at this look, the always-valid p-value, and the mixture variance used."""

    difference: float
    interval: Interval
    p_value: float
    mixture_variance: float


def optimal_mixture_ratio(alpha: float) -> float:
    """r = tau^2 / V* minimising the sequence's width at the planned size: the root of r = 2 log(1/a) + log(1+r).

    The width is proportional to sqrt((1 + 1/r)(2 log(1/alpha) + log(1 + r))); setting its derivative to zero
    gives the fixed point, a contraction (slope 1 / (1 + r) < 1), so iterating converges.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    base = -2.0 * math.log(alpha)
    r = base
    for _ in range(200):
        nxt = base + math.log1p(r)
        if abs(nxt - r) <= 1e-15 * nxt:
            return nxt
        r = nxt
    return r


def mixture_variance(variance: np.ndarray | float, n: np.ndarray | float, planned_n: float, alpha: float) -> np.ndarray:
    """tau^2 = r V n / n_planned, the mixture variance tightest at the planned size (see module docstring)."""
    if planned_n <= 0:
        raise ValueError(f"planned_n must be positive, got {planned_n}")
    return optimal_mixture_ratio(alpha) * np.asarray(variance, dtype=float) * np.asarray(n, dtype=float) / planned_n


def confidence_sequence(
    difference: np.ndarray | float,
    variance: np.ndarray | float,
    *,
    n: np.ndarray | float,
    planned_n: float,
    alpha: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the confidence sequence at each look (arrays broadcast together).

    `variance` is the variance of `difference` at that look (s_c^2/n_c + s_v^2/n_v), `n` the users in the two
    arms so far. A zero variance carries no information: the bounds are (-inf, inf).
    """
    d = np.asarray(difference, dtype=float)
    v = np.asarray(variance, dtype=float)
    tau2 = mixture_variance(v, n, planned_n, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        half = np.sqrt(v * (v + tau2) / tau2 * (-2.0 * math.log(alpha) + np.log((v + tau2) / v)))
    half = np.where(v > 0, half, np.inf)
    return d - half, d + half


def always_valid_p_value(
    difference: np.ndarray | float,
    variance: np.ndarray | float,
    *,
    n: np.ndarray | float,
    planned_n: float,
    alpha: float = 0.05,
) -> np.ndarray:
    """min(1, 1 / Lambda) at each look for H0: no difference; p <= alpha exactly when the sequence excludes 0.

    `alpha` only tunes the mixture variance (so that p and the sequence agree); the p-value is valid as one.
    """
    d = np.asarray(difference, dtype=float)
    v = np.asarray(variance, dtype=float)
    tau2 = mixture_variance(v, n, planned_n, alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lambda = 0.5 * np.log(v / (v + tau2)) + tau2 * d * d / (2.0 * v * (v + tau2))
    p = np.exp(-np.maximum(log_lambda, 0.0))
    return np.where(v > 0, p, 1.0)


def running(lower: np.ndarray, upper: np.ndarray, p_value: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersect the sequence and take the minimum p-value over the looks so far (looks on the last axis).

    The coverage holds at all looks at once, so the intersection of all intervals so far covers as well,
    and the smallest p-value so far is as valid as the current one.
    """
    return (
        np.maximum.accumulate(lower, axis=-1),
        np.minimum.accumulate(upper, axis=-1),
        np.minimum.accumulate(p_value, axis=-1),
    )


def sequential_test(control: Moments, variant: Moments, *, planned_n: float, alpha: float = 0.05) -> SequentialResult:
    """The confidence sequence and always-valid p-value for variant - control at the current look.

    `planned_n` is the number of users in these two arms at which the experiment expects to decide.
    """
    difference = variant.mean - control.mean
    variance = control.variance / control.n + variant.variance / variant.n
    n = control.n + variant.n
    lower, upper = confidence_sequence(difference, variance, n=n, planned_n=planned_n, alpha=alpha)
    p = always_valid_p_value(difference, variance, n=n, planned_n=planned_n, alpha=alpha)
    tau2 = mixture_variance(variance, n, planned_n, alpha)
    return SequentialResult(difference, Interval(float(lower), float(upper)), float(p), float(tau2))
