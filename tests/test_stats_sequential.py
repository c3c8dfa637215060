"""Always-valid intervals under daily peeking, against the fixed-horizon test peeked at daily.

Each simulation runs experiments for 28 days and looks every day at the cumulative data; an experiment counts
as a false positive if any look rejects. Rates are held to three binomial standard errors."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.stats.frequentist import two_proportion_ztest
from engine.stats.samples import Moments
from engine.stats.sequential import (
    always_valid_p_value,
    confidence_sequence,
    mixture_variance,
    optimal_mixture_ratio,
    running,
    sequential_test,
)

ALPHA = 0.05
DAYS = 28


def upper_tolerance(rate: float, trials: int) -> float:
    return rate + 3 * math.sqrt(rate * (1 - rate) / trials)


def daily_conversions(
    rng: np.random.Generator, experiments: int, per_day: int, control_rate: float, variant_rate: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative users per arm and conversions per arm at each day's look: shape (experiments, DAYS)."""
    users = per_day * np.arange(1, DAYS + 1)
    control = rng.binomial(per_day, control_rate, size=(experiments, DAYS)).cumsum(axis=1)
    variant = rng.binomial(per_day, variant_rate, size=(experiments, DAYS)).cumsum(axis=1)
    return np.broadcast_to(users, control.shape), control, variant


def proportion_sequence(users: np.ndarray, control: np.ndarray, variant: np.ndarray, planned_n: float):
    p_c, p_v = control / users, variant / users
    difference = p_v - p_c
    variance = p_c * (1 - p_c) / users + p_v * (1 - p_v) / users
    lower, upper = confidence_sequence(difference, variance, n=2 * users, planned_n=planned_n, alpha=ALPHA)
    p = always_valid_p_value(difference, variance, n=2 * users, planned_n=planned_n, alpha=ALPHA)
    return running(lower, upper, p)


def test_aa_with_daily_peeking_keeps_alpha_while_the_naive_test_does_not() -> None:
    """2,000 A/A experiments, 200 users per arm per day at 10%, looked at daily for four weeks."""
    rng = np.random.default_rng(31)
    experiments, per_day = 2000, 200
    users, control, variant = daily_conversions(rng, experiments, per_day, 0.10, 0.10)
    lower, upper, p = proportion_sequence(users, control, variant, planned_n=2 * per_day * DAYS)
    sequential_rate = float(np.mean((lower[:, -1] > 0) | (upper[:, -1] < 0)))
    assert sequential_rate <= upper_tolerance(ALPHA, experiments)
    assert float(np.mean(p[:, -1] <= ALPHA)) == sequential_rate  # the p-value and the interval agree
    naive = np.array(
        [
            [
                two_proportion_ztest(int(c), int(n), int(v), int(n)).p_value < ALPHA
                for n, c, v in zip(users[i], control[i], variant[i], strict=True)
            ]
            for i in range(500)
        ]
    )
    naive_rate = float(np.mean(naive.any(axis=1)))
    assert naive_rate > upper_tolerance(ALPHA, 500)  # peeking inflates the fixed-horizon test
    assert float(np.mean(naive[:, -1])) <= upper_tolerance(ALPHA, 500)  # looked at once, it is fine


def test_aa_on_a_skewed_mean_with_daily_peeking_keeps_alpha() -> None:
    """1,000 A/A experiments on revenue per user (10% buy, lognormal amounts), 100 users per arm per day."""
    rng = np.random.default_rng(32)
    experiments, per_day = 1000, 100

    def cumulative(size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        values = np.where(rng.random(size) < 0.10, rng.lognormal(3.0, 0.8, size=size), 0.0)
        return values.sum(axis=2).cumsum(axis=1), (values**2).sum(axis=2).cumsum(axis=1)

    n = per_day * np.arange(1, DAYS + 1)
    (c1, c2), (v1, v2) = cumulative((experiments, DAYS, per_day)), cumulative((experiments, DAYS, per_day))
    mean_c, mean_v = c1 / n, v1 / n
    var_c, var_v = (c2 - n * mean_c**2) / (n - 1), (v2 - n * mean_v**2) / (n - 1)
    lower, upper = confidence_sequence(
        mean_v - mean_c, var_c / n + var_v / n, n=2 * n, planned_n=2 * per_day * DAYS, alpha=ALPHA
    )
    lower, upper, _ = running(lower, upper, np.ones_like(lower))
    rate = float(np.mean((lower[:, -1] > 0) | (upper[:, -1] < 0)))
    assert rate <= upper_tolerance(ALPHA, experiments)


def test_the_sequence_covers_a_real_difference_at_every_look_and_finds_it() -> None:
    """10% vs 12%, 300 users per arm per day: the running interval holds 0.02 on all 28 days in >= 95% of
    1,000 experiments, and excludes zero by the end in most of them (a fixed-horizon test at the final
    size would have ~98% power; the price of looking daily is some of it)."""
    rng = np.random.default_rng(33)
    experiments, per_day = 1000, 300
    users, control, variant = daily_conversions(rng, experiments, per_day, 0.10, 0.12)
    lower, upper, _ = proportion_sequence(users, control, variant, planned_n=2 * per_day * DAYS)
    always_covered = np.all((lower <= 0.02) & (upper >= 0.02), axis=1)
    assert float(np.mean(always_covered)) >= 1 - upper_tolerance(ALPHA, experiments)
    assert float(np.mean(lower[:, -1] > 0)) > 0.5


def test_the_mixture_ratio_is_the_width_minimising_fixed_point() -> None:
    for alpha in (0.01, 0.05, 0.1):
        r = optimal_mixture_ratio(alpha)
        assert r == pytest.approx(-2 * math.log(alpha) + math.log1p(r), rel=1e-14)

        def width(ratio: float, alpha: float = alpha) -> float:
            return (1 + 1 / ratio) * (-2 * math.log(alpha) + math.log1p(ratio))

        assert width(r) < min(width(r * 0.99), width(r * 1.01))
    with pytest.raises(ValueError):
        optimal_mixture_ratio(1.5)


@settings(max_examples=200, deadline=None)
@given(
    difference=st.floats(min_value=-1.0, max_value=1.0),
    variance=st.floats(min_value=1e-8, max_value=1.0),
    n=st.integers(min_value=10, max_value=10**6),
    planned=st.integers(min_value=10, max_value=10**6),
)
def test_the_p_value_rejects_exactly_when_the_interval_excludes_zero(
    difference: float, variance: float, n: int, planned: int
) -> None:
    lower, upper = confidence_sequence(difference, variance, n=n, planned_n=planned, alpha=ALPHA)
    p = always_valid_p_value(difference, variance, n=n, planned_n=planned, alpha=ALPHA)
    excludes = bool(lower > 0 or upper < 0)
    if abs(float(p) - ALPHA) > 1e-9:  # on the boundary itself rounding decides
        assert (float(p) <= ALPHA) == excludes
    # the interval is wider than the fixed-horizon one: the price of looking any number of times
    assert float(upper - lower) > 2 * 1.959963984540054 * math.sqrt(variance)
    assert float(mixture_variance(variance, n, planned, ALPHA)) == pytest.approx(
        optimal_mixture_ratio(ALPHA) * variance * n / planned
    )


def test_single_look_helper_and_a_look_without_information() -> None:
    result = sequential_test(Moments.of_conversions(100, 1000), Moments.of_conversions(160, 1000), planned_n=4000)
    lower, upper = confidence_sequence(0.06, 0.1 * 0.9 / 1000 + 0.16 * 0.84 / 1000, n=2000, planned_n=4000)
    assert result.interval.lower == pytest.approx(float(lower)) and result.interval.upper == pytest.approx(float(upper))
    assert result.p_value < ALPHA
    empty = sequential_test(Moments.of_conversions(0, 50), Moments.of_conversions(0, 50), planned_n=4000)
    assert empty.interval.lower == -math.inf and empty.interval.upper == math.inf and empty.p_value == 1.0
