"""CUPED: variance reduction with a pre-experiment covariate (Deng, Xu, Kohavi & Walker 2013, "Improving the
Sensitivity of Online Controlled Experiments by Utilizing Pre-Experiment Data", WSDM).

Each user's metric Y is replaced by Y - theta (X - mean(X)), X the same user's pre-period value. With
theta = cov(Y, X) / var(X) the adjusted metric's variance is var(Y) (1 - rho^2), rho = corr(Y, X), so the
same experiment reaches the same precision with 1 - rho^2 of the users. X was fixed before assignment, so
it is independent of the arm: the adjustment changes no arm's expected mean difference (the estimate stays
unbiased), only its noise. theta and mean(X) are computed over all arms pooled, as in the paper, so every
arm is adjusted by the same line; a constant covariate (var(X) = 0) gives theta = 0, no adjustment.
"""

from dataclasses import dataclass

import polars as pl

from engine.stats.frequentist import WelchTest, welch_ttest
from engine.stats.samples import Moments


@dataclass(frozen=True)
class CupedComparison:
    """Welch's test on CUPED-adjusted values, with theta and the variance the adjustment removed."""

    theta: float
    control: Moments
    variant: Moments
    variance_reduction: float  # 1 - Var(adjusted difference) / Var(raw difference)
    test: WelchTest


def with_cuped(frame: pl.LazyFrame, *, metric: str, covariate: str, alias: str, theta_alias: str) -> pl.LazyFrame:
    """`frame` with the adjusted metric as `alias`, and theta (one value, repeated) as `theta_alias`."""
    x = pl.col(covariate)
    variance = x.var(ddof=1)
    theta = pl.when(variance > 0).then(pl.cov(metric, covariate, ddof=1) / variance).otherwise(0.0)
    return frame.with_columns(theta.alias(theta_alias)).with_columns(
        (pl.col(metric) - pl.col(theta_alias) * (x - x.mean())).alias(alias)
    )


def cuped_comparison(
    *,
    theta: float,
    control_raw: Moments,
    variant_raw: Moments,
    control: Moments,
    variant: Moments,
    alpha: float = 0.05,
) -> CupedComparison:
    """Welch's test of the adjusted arms, and the share of the difference's variance the adjustment removed."""
    raw = control_raw.variance / control_raw.n + variant_raw.variance / variant_raw.n
    adjusted = control.variance / control.n + variant.variance / variant.n
    return CupedComparison(
        theta=theta,
        control=control,
        variant=variant,
        variance_reduction=1.0 - adjusted / raw if raw > 0 else 0.0,
        test=welch_ttest(control, variant, alpha=alpha),
    )
