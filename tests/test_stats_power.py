"""Power and false-positive rate by simulation: a known lift is detected at the planned power, and an A/A test
rejects at alpha. Tolerances are three binomial standard errors of the simulated rate."""

import math

import numpy as np
from scipy import stats

from engine.stats.frequentist import two_proportion_ztest, welch_ttest
from engine.stats.power import sample_size_two_means, sample_size_two_proportions
from engine.stats.samples import Moments

ALPHA = 0.05


def within(rate: float, expected: float, trials: int) -> bool:
    return abs(rate - expected) <= 3 * math.sqrt(expected * (1 - expected) / trials)


def test_sample_sizes_follow_the_textbook_formulas() -> None:
    """10% -> 12% at alpha 0.05 and 80% power needs 3,841 users per arm (pooled-null formula); a half-SD
    difference needs 2 (1.96 + 0.84)^2 / 0.25 = 62.8, so 63 per arm."""
    z_a, z_b = stats.norm.ppf(1 - ALPHA / 2), stats.norm.ppf(0.8)
    direct = (z_a * math.sqrt(2 * 0.11 * 0.89) + z_b * math.sqrt(0.1 * 0.9 + 0.12 * 0.88)) ** 2 / 0.02**2
    assert sample_size_two_proportions(0.10, 0.12) == math.ceil(direct) == 3841
    assert sample_size_two_means(1.0, 0.5) == math.ceil(2 * (z_a + z_b) ** 2 / 0.25) == 63
    assert sample_size_two_means(3.0, 0.6, power=0.9) == math.ceil(2 * 9 * (z_a + stats.norm.ppf(0.9)) ** 2 / 0.36)


def test_a_known_conversion_lift_is_detected_at_the_planned_power() -> None:
    """400 experiments of 10% vs 12% at the planned 3,841 users per arm: ~80% reach p < 0.05 (and the right
    sign)."""
    rng = np.random.default_rng(1)
    experiments = 400
    n = sample_size_two_proportions(0.10, 0.12, alpha=ALPHA, power=0.8)
    control = rng.binomial(n, 0.10, size=experiments)
    variant = rng.binomial(n, 0.12, size=experiments)
    detected = [
        (test.p_value < ALPHA and test.difference > 0)
        for test in (
            two_proportion_ztest(int(c), n, int(v), n, alpha=ALPHA) for c, v in zip(control, variant, strict=True)
        )
    ]
    assert within(float(np.mean(detected)), 0.80, experiments)


def test_a_known_mean_lift_is_detected_at_the_planned_power() -> None:
    """400 experiments of N(0, 1) vs N(0.2, 1) at the planned 393 users per arm, by Welch's test."""
    rng = np.random.default_rng(2)
    experiments = 400
    n = sample_size_two_means(1.0, 0.2, alpha=ALPHA, power=0.8)
    control = rng.normal(0.0, 1.0, size=(experiments, n))
    variant = rng.normal(0.2, 1.0, size=(experiments, n))
    detected = [
        (test.p_value < ALPHA and test.difference > 0)
        for test in (
            welch_ttest(Moments.of_values(c), Moments.of_values(v), alpha=ALPHA)
            for c, v in zip(control, variant, strict=True)
        )
    ]
    assert within(float(np.mean(detected)), 0.80, experiments)


def test_an_aa_conversion_test_rejects_at_alpha() -> None:
    """4,000 A/A experiments of 5,000 users per arm at 10%: the z-test rejects ~5% of them."""
    rng = np.random.default_rng(3)
    experiments, n = 4000, 5000
    control = rng.binomial(n, 0.10, size=experiments)
    variant = rng.binomial(n, 0.10, size=experiments)
    rejected = [
        two_proportion_ztest(int(c), n, int(v), n, alpha=ALPHA).p_value < ALPHA
        for c, v in zip(control, variant, strict=True)
    ]
    assert within(float(np.mean(rejected)), ALPHA, experiments)


def test_an_aa_revenue_test_rejects_at_alpha() -> None:
    """2,000 A/A experiments on a zero-inflated, skewed revenue metric (10% buy, lognormal amounts) with
    unequal arms (1,500 and 1,000 users): Welch's test rejects ~5% of them."""
    rng = np.random.default_rng(4)
    experiments = 2000

    def revenue(users: int) -> np.ndarray:
        buys = rng.random((experiments, users)) < 0.10
        return np.where(buys, rng.lognormal(3.0, 0.8, size=(experiments, users)), 0.0)

    control, variant = revenue(1500), revenue(1000)
    rejected = [
        welch_ttest(Moments.of_values(c), Moments.of_values(v)).p_value < ALPHA
        for c, v in zip(control, variant, strict=True)
    ]
    assert within(float(np.mean(rejected)), ALPHA, experiments)
