"""Holm's correction: a worked example, the step-down procedure it summarises, and family-wise error control."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.stats.multiple import holm_adjust


def test_worked_example_from_the_holm_bonferroni_literature() -> None:
    """Wikipedia, "Holm-Bonferroni method", Example: p = 0.01, 0.04, 0.03, 0.005 at alpha = 0.05 rejects
    H1 and H4 only (0.005 < 0.05/4, 0.01 < 0.05/3, 0.03 > 0.05/2). Adjusted: 4 x 0.005 = 0.02,
    3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(0.06, 1 x 0.04) = 0.06 (what R's p.adjust(p, "holm") prints)."""
    adjusted = holm_adjust([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert [p <= 0.05 for p in adjusted] == [True, False, False, True]


def step_down_rejections(p_values: list[float], alpha: float) -> set[int]:
    """Holm (1979) as he states it: compare the ordered p-values with alpha/m, alpha/(m-1), ..., stop at the
    first that is not below its level."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected: set[int] = set()
    for rank, index in enumerate(order):
        if p_values[index] > alpha / (len(p_values) - rank):
            break
        rejected.add(index)
    return rejected


@settings(max_examples=300, deadline=None)
@given(
    p_values=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=16),
    alpha=st.sampled_from([0.001, 0.01, 0.05, 0.1, 0.2]),
)
def test_adjusted_p_values_reproduce_the_step_down_procedure(p_values: list[float], alpha: float) -> None:
    adjusted = holm_adjust(p_values)
    decided = {i for i, p in enumerate(adjusted) if p <= alpha}
    boundary = {i for i, p in enumerate(p_values) for k in range(1, len(p_values) + 1) if p * k == alpha}
    if not boundary:  # ties with a level exactly are decided by rounding in the product; skip those
        assert decided == step_down_rejections(p_values, alpha)
    for raw, adj in zip(p_values, adjusted, strict=True):
        assert raw <= adj <= min(1.0, len(p_values) * raw)
    ranked = sorted(zip(p_values, adjusted, strict=True))
    assert all(a <= b for (_, a), (_, b) in itertools.pairwise(ranked))


def test_nan_p_values_stay_nan_and_do_not_count() -> None:
    adjusted = holm_adjust([0.01, math.nan, 0.02])
    assert math.isnan(adjusted[1])
    assert adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.02)
    with pytest.raises(ValueError):
        holm_adjust([1.5])


def test_family_wise_error_rate_across_15_variants_sharing_a_control() -> None:
    """A/A with 15 variants against one control, 4,000 times: at least one raw p < 0.05 in most
    experiments, while Holm keeps the family-wise rate at or below 5% (plus three binomial standard
    errors). The tests share the control, so they are correlated, which Holm allows for."""
    rng = np.random.default_rng(2024)
    experiments, users = 4000, 2000
    means = rng.normal(0.0, 1.0 / math.sqrt(users), size=(experiments, 16))  # each arm's mean of N(0, 1)
    z = (means[:, 1:] - means[:, :1]) / math.sqrt(2.0 / users)
    p = np.vectorize(lambda x: math.erfc(abs(x) / math.sqrt(2.0)))(z)
    raw_any = np.mean((p < 0.05).any(axis=1))
    holm_any = np.mean([min(holm_adjust(row.tolist())) <= 0.05 for row in p])
    assert raw_any > 0.3
    assert holm_any <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / experiments)
