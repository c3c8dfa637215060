"""Fixed-horizon tests of a variant against control: two proportions, Welch's t, and the relative lift.

These are the textbook tests an analyst would run once at the planned sample size. Looking at them daily
inflates their false-positive rate (the tests show by how much); `sequential.py` is for daily looks.

Degenerate inputs (a zero standard error: no conversions anywhere yet, or a constant metric) give nan
statistics and p-values, as scipy's `ttest_ind` does, rather than a confident 0 or 1.
"""

import math
from dataclasses import dataclass

from engine.stats.distributions import normal_ppf, normal_sf, t_ppf, t_sf
from engine.stats.samples import Interval, Moments

_NAN_INTERVAL = Interval(math.nan, math.nan)


@dataclass(frozen=True)
class ProportionTest:
    """A two-proportion z-test of variant - control."""

    difference: float
    statistic: float
    p_value: float
    interval: Interval
    standard_error: float


@dataclass(frozen=True)
class WelchTest:
    """Welch's unequal-variance t-test of variant - control."""

    difference: float
    statistic: float
    df: float
    p_value: float
    interval: Interval
    standard_error: float


@dataclass(frozen=True)
class Lift:
    """The relative lift variant / control - 1 and its delta-method interval."""

    lift: float
    interval: Interval
    standard_error: float


def two_proportion_ztest(
    control_conversions: int,
    control_users: int,
    variant_conversions: int,
    variant_users: int,
    *,
    alpha: float = 0.05,
) -> ProportionTest:
    """Two-sided two-proportion z-test; pooled standard error for the test, unpooled for the interval.

    Under H0: p_c = p_v the best estimate of the common rate is the pooled p = (x_c + x_v) / (n_c + n_v), so
    z = (p_v - p_c) / sqrt(p (1 - p) (1/n_c + 1/n_v)); z^2 is Pearson's chi-square for the 2x2 table. The
    interval for the difference is not conditioned on H0, so it uses the unpooled (Wald) standard error
    sqrt(p_c (1 - p_c) / n_c + p_v (1 - p_v) / n_v). (Fleiss, Levin & Paik, Statistical Methods for Rates and
    Proportions, 3rd ed., 2003; Agresti, Categorical Data Analysis, 3rd ed., 2013, ch. 3.)
    """
    control = Moments.of_conversions(control_conversions, control_users)
    variant = Moments.of_conversions(variant_conversions, variant_users)
    difference = variant.mean - control.mean
    pooled = (control_conversions + variant_conversions) / (control_users + variant_users)
    pooled_se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / control_users + 1.0 / variant_users))
    unpooled_se = math.sqrt(control.variance / control.n + variant.variance / variant.n)
    if pooled_se == 0.0:
        return ProportionTest(difference, math.nan, math.nan, _NAN_INTERVAL, unpooled_se)
    z = difference / pooled_se
    half = normal_ppf(1.0 - alpha / 2.0) * unpooled_se
    return ProportionTest(
        difference=difference,
        statistic=z,
        p_value=2.0 * normal_sf(abs(z)),
        interval=Interval(difference - half, difference + half),
        standard_error=unpooled_se,
    )


def welch_ttest(control: Moments, variant: Moments, *, alpha: float = 0.05) -> WelchTest:
    """Welch's two-sided t-test for variant - control with the Welch-Satterthwaite degrees of freedom.

    t = (m_v - m_c) / sqrt(s_c^2 / n_c + s_v^2 / n_v), df = (s_c^2/n_c + s_v^2/n_v)^2 /
    ((s_c^2/n_c)^2 / (n_c - 1) + (s_v^2/n_v)^2 / (n_v - 1)) (Welch 1947, Biometrika 34; Satterthwaite 1946,
    Biometrics Bulletin 2). It does not assume equal variances, which a treatment that changes behaviour
    rarely leaves alone, and costs almost nothing when they are equal.
    """
    if control.n < 2 or variant.n < 2:
        raise ValueError(f"Welch's test needs two users per arm, got {control.n} and {variant.n}")
    difference = variant.mean - control.mean
    part_c = control.variance / control.n
    part_v = variant.variance / variant.n
    se2 = part_c + part_v
    if se2 == 0.0:
        return WelchTest(difference, math.nan, math.nan, math.nan, _NAN_INTERVAL, 0.0)
    se = math.sqrt(se2)
    df = se2 * se2 / (part_c * part_c / (control.n - 1) + part_v * part_v / (variant.n - 1))
    statistic = difference / se
    half = t_ppf(1.0 - alpha / 2.0, df) * se
    return WelchTest(
        difference=difference,
        statistic=statistic,
        df=df,
        p_value=min(1.0, 2.0 * t_sf(abs(statistic), df)),
        interval=Interval(difference - half, difference + half),
        standard_error=se,
    )


def relative_lift(control: Moments, variant: Moments, *, alpha: float = 0.05) -> Lift:
    """variant / control - 1 with a delta-method standard error for independent arms.

    Var(m_v / m_c) ~ s_v^2 / (n_v m_c^2) + m_v^2 s_c^2 / (n_c m_c^4), the first-order Taylor expansion of the
    ratio (Deng, Knoblich & Lu 2018, "Applying the Delta Method in Metric Analytics", KDD; Casella &
    Berger, Statistical Inference, 2nd ed., section 5.5.4). A control mean of zero leaves it undefined (nan).
    """
    if control.mean == 0.0:
        return Lift(math.nan, _NAN_INTERVAL, math.nan)
    ratio = variant.mean / control.mean
    variance = variant.variance / (variant.n * control.mean**2) + variant.mean**2 * control.variance / (
        control.n * control.mean**4
    )
    se = math.sqrt(variance)
    half = normal_ppf(1.0 - alpha / 2.0) * se
    lift = ratio - 1.0
    return Lift(lift, Interval(lift - half, lift + half), se)
