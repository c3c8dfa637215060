"""The sample-ratio-mismatch check against scipy's chisquare, on skewed and fair splits."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from engine.stats.srm import srm_check


@settings(max_examples=150, deadline=None)
@given(
    arms=st.lists(
        st.tuples(st.integers(min_value=0, max_value=10**6), st.floats(min_value=0.01, max_value=100.0)),
        min_size=2,
        max_size=16,
    )
)
def test_srm_matches_scipy_chisquare(arms: list[tuple[int, float]]) -> None:
    observed = [o for o, _ in arms]
    weights = [w for _, w in arms]
    if sum(observed) == 0:
        with pytest.raises(ValueError):
            srm_check(observed, weights)
        return
    result = srm_check(observed, weights)
    expected = np.array(weights) / math.fsum(weights) * sum(observed)
    reference = stats.chisquare(observed, expected)
    assert math.isclose(result.statistic, reference.statistic, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(result.p_value, reference.pvalue, rel_tol=1e-9, abs_tol=1e-300)
    assert result.df == len(arms) - 1
    assert result.flagged == (reference.pvalue < 0.001)


def test_deliberately_skewed_split_is_flagged_and_a_fair_one_is_not() -> None:
    """50/50 configured: 10,000 vs 10,600 users is chi2 = 17.5, p = 3e-5, an SRM at the usual p < 0.001;
    10,000 vs 10,050 is the noise of a fair coin (p = 0.73)."""
    skewed = srm_check([10_000, 10_600], [0.5, 0.5])
    assert skewed.flagged and skewed.p_value < 1e-4
    fair = srm_check([10_000, 10_050], [0.5, 0.5])
    assert not fair.flagged and fair.p_value > 0.5


def test_a_split_of_5000_to_5300_is_suspicious_but_below_the_usual_alarm() -> None:
    """chi2 = 2 * 150^2 / 5150 = 8.74 on 1 df, p = 0.0031: flagged at 0.01, not at the 0.001 convention."""
    check = srm_check([5000, 5300], [1, 1])
    assert check.statistic == pytest.approx(2 * 150**2 / 5150, rel=1e-12)
    assert check.p_value == pytest.approx(stats.chi2.sf(2 * 150**2 / 5150, 1), rel=1e-9)
    assert not check.flagged
    assert srm_check([5000, 5300], [1, 1], threshold=0.01).flagged


def test_unequal_weights_and_many_arms() -> None:
    """A 50/25/25 split read against 50/25/25 is fine; the same counts against equal thirds are not."""
    counts = [50_210, 24_950, 24_840]
    assert not srm_check(counts, [2, 1, 1]).flagged
    assert srm_check(counts, [1, 1, 1]).flagged


def test_p_values_of_fair_splits_are_uniform() -> None:
    """Over 4,000 fair 16-arm multinomial splits, the check fires at 5% of them at threshold 0.05 (within three
    binomial standard errors): its p-values are calibrated, so 0.001 means 1 false alarm in 1,000."""
    rng = np.random.default_rng(99)
    weights = np.array([4.0] + [1.0] * 15)
    splits = rng.multinomial(20_000, weights / weights.sum(), size=4000)
    rate = np.mean([srm_check(split.tolist(), weights.tolist(), threshold=0.05).flagged for split in splits])
    assert abs(rate - 0.05) <= 3 * math.sqrt(0.05 * 0.95 / 4000)


def test_refuses_malformed_input() -> None:
    with pytest.raises(ValueError):
        srm_check([10], [1.0])
    with pytest.raises(ValueError):
        srm_check([10, 10], [1.0, 0.0])
    with pytest.raises(ValueError):
        srm_check([10, 10, 10], [1.0, 1.0])


def test_names_each_count_and_refuses_names_that_do_not_fit() -> None:
    """The names run beside the counts (a report reads one with the other); bare counts are numbered."""
    named = srm_check([5000, 0, 5300], [1, 1, 1], arms=["control", "c", "b"])
    assert named.arms == ("control", "c", "b") and named.observed == (5000, 0, 5300)
    assert srm_check([5000, 5300], [1, 1]).arms == ("arm 1", "arm 2")
    with pytest.raises(ValueError, match="one distinct name per count"):
        srm_check([10, 10], [1.0, 1.0], arms=["a"])
    with pytest.raises(ValueError, match="one distinct name per count"):
        srm_check([10, 10], [1.0, 1.0], arms=["a", "a"])
