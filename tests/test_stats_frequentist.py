"""Fixed-horizon tests and intervals against scipy and the textbook formulas, and the lift's coverage."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy import stats

from engine.stats.frequentist import relative_lift, two_proportion_ztest, welch_ttest
from engine.stats.samples import Moments, mean_interval, wilson_interval

REL = 1e-9


def close(ours: float, reference: float, abs_tol: float = 1e-300) -> bool:
    return math.isclose(ours, reference, rel_tol=REL, abs_tol=abs_tol)


@st.composite
def two_arms(draw: st.DrawFn) -> tuple[int, int, int, int]:
    control_users = draw(st.integers(min_value=20, max_value=2_000_000))
    variant_users = draw(st.integers(min_value=20, max_value=2_000_000))
    return (
        draw(st.integers(min_value=0, max_value=control_users)),
        control_users,
        draw(st.integers(min_value=0, max_value=variant_users)),
        variant_users,
    )


@settings(max_examples=200, deadline=None)
@given(arms=two_arms(), alpha=st.sampled_from([0.01, 0.05, 0.1]))
def test_two_proportion_ztest_matches_the_direct_formula_and_scipy(
    arms: tuple[int, int, int, int], alpha: float
) -> None:
    x_c, n_c, x_v, n_v = arms
    result = two_proportion_ztest(x_c, n_c, x_v, n_v, alpha=alpha)
    p_c, p_v = x_c / n_c, x_v / n_v
    pooled = (x_c + x_v) / (n_c + n_v)
    if pooled in (0.0, 1.0):
        assert math.isnan(result.statistic) and math.isnan(result.p_value)
        return
    z = (p_v - p_c) / math.sqrt(pooled * (1 - pooled) * (1 / n_c + 1 / n_v))
    assert close(result.statistic, z, abs_tol=1e-12)
    assert close(result.p_value, 2 * stats.norm.sf(abs(z)))
    half = stats.norm.ppf(1 - alpha / 2) * math.sqrt(p_c * (1 - p_c) / n_c + p_v * (1 - p_v) / n_v)
    assert close(result.interval.lower, p_v - p_c - half, abs_tol=1e-15)
    assert close(result.interval.upper, p_v - p_c + half, abs_tol=1e-15)
    # z^2 is Pearson's chi-square on the 2x2 table (no continuity correction): an independent scipy route.
    table = np.array([[x_c, n_c - x_c], [x_v, n_v - x_v]])
    chi2, p, _, _ = stats.chi2_contingency(table, correction=False)
    assert close(result.statistic**2, chi2, abs_tol=1e-12)
    assert close(result.p_value, p, abs_tol=1e-15)


sample = st.lists(st.integers(min_value=-5000, max_value=5000), min_size=2, max_size=60).map(
    lambda values: np.array(values, dtype=float) / 10.0
)


@settings(max_examples=120, deadline=None)
@given(control=sample, variant=sample, alpha=st.sampled_from([0.01, 0.05, 0.2]))
def test_welch_matches_scipy_ttest_ind(control: np.ndarray, variant: np.ndarray, alpha: float) -> None:
    assume(np.ptp(control) > 0 and np.ptp(variant) > 0)  # scipy warns of precision loss on a constant arm
    ours = welch_ttest(Moments.of_values(control), Moments.of_values(variant), alpha=alpha)
    reference = stats.ttest_ind(variant, control, equal_var=False)
    interval = reference.confidence_interval(confidence_level=1 - alpha)
    assert close(ours.statistic, reference.statistic, abs_tol=1e-12)
    assert close(ours.p_value, reference.pvalue, abs_tol=1e-15)
    assert close(ours.df, reference.df)
    assert close(ours.interval.lower, interval.low, abs_tol=1e-12)
    assert close(ours.interval.upper, interval.high, abs_tol=1e-12)


def test_welch_with_one_constant_arm_falls_back_to_the_other_arms_degrees_of_freedom() -> None:
    """With s_c = 0 the Welch-Satterthwaite df is exactly n_v - 1: the one-sample t-test of the variant."""
    variant = np.array([1.0, 2.5, 3.0, 7.25, 4.0])
    ours = welch_ttest(Moments(50, 2.0, 0.0), Moments.of_values(variant))
    reference = stats.ttest_1samp(variant, 2.0)
    assert close(ours.df, 4.0)
    assert close(ours.statistic, reference.statistic)
    assert close(ours.p_value, reference.pvalue)


def test_welch_of_constant_arms_is_undefined_as_in_scipy() -> None:
    result = welch_ttest(Moments(100, 2.0, 0.0), Moments(100, 2.0, 0.0))
    assert math.isnan(result.statistic) and math.isnan(result.p_value)
    with pytest.raises(ValueError):
        welch_ttest(Moments(1, 2.0, 0.0), Moments(100, 2.0, 1.0))


@settings(max_examples=150, deadline=None)
@given(users=st.integers(min_value=1, max_value=10**7), data=st.data(), alpha=st.sampled_from([0.01, 0.05]))
def test_wilson_interval_matches_scipy(users: int, data: st.DataObject, alpha: float) -> None:
    conversions = data.draw(st.integers(min_value=0, max_value=users))
    ours = wilson_interval(conversions, users, alpha=alpha)
    reference = stats.binomtest(conversions, users).proportion_ci(confidence_level=1 - alpha, method="wilson")
    assert close(ours.lower, reference.low, abs_tol=1e-15)
    assert close(ours.upper, reference.high, abs_tol=1e-15)


@settings(max_examples=150, deadline=None)
@given(values=sample, alpha=st.sampled_from([0.01, 0.05]))
def test_mean_interval_matches_scipy(values: np.ndarray, alpha: float) -> None:
    assume(np.ptp(values) > 0)
    ours = mean_interval(Moments.of_values(values), alpha=alpha)
    reference = stats.ttest_1samp(values, 0.0).confidence_interval(confidence_level=1 - alpha)
    assert close(ours.lower, reference.low, abs_tol=1e-12)
    assert close(ours.upper, reference.high, abs_tol=1e-12)


def test_delta_method_lift_covers_the_true_lift_at_its_nominal_rate() -> None:
    """Over 2,000 simulated experiments with a 10% true lift on a skewed revenue metric (gamma, shape 0.5),
    the 95% delta-method interval covers 10% in 95% +/- 3 binomial standard errors of them."""
    rng = np.random.default_rng(20240607)
    experiments, users = 2000, 800
    control = rng.gamma(0.5, 20.0, size=(experiments, users))
    variant = rng.gamma(0.5, 22.0, size=(experiments, users))
    covered = 0
    for c, v in zip(control, variant, strict=True):
        lift = relative_lift(Moments.of_values(c), Moments.of_values(v))
        covered += lift.interval.contains(0.1)
    rate = covered / experiments
    assert abs(rate - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / experiments)


def test_delta_method_lift_on_conversions_covers_and_is_undefined_without_conversions() -> None:
    rng = np.random.default_rng(7)
    experiments, users = 2000, 5000
    control = rng.binomial(users, 0.10, size=experiments)
    variant = rng.binomial(users, 0.12, size=experiments)
    covered = sum(
        relative_lift(Moments.of_conversions(int(c), users), Moments.of_conversions(int(v), users)).interval.contains(
            0.2
        )
        for c, v in zip(control, variant, strict=True)
    )
    assert abs(covered / experiments - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / experiments)
    assert math.isnan(relative_lift(Moments.of_conversions(0, 100), Moments.of_conversions(3, 100)).lift)
