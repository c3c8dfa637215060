"""Thompson-sampling allocation and the winner-promotion rule."""

import math

import numpy as np
import pytest

from engine.stats.thompson import PromotionRule, promotion_decision, thompson_allocation


def test_allocation_is_deterministic_floored_and_favours_the_better_arm() -> None:
    conversions, users = [50, 58, 80], [1000, 1000, 1000]
    first = thompson_allocation(conversions, users, rng=np.random.default_rng(1), floor=0.05)
    again = thompson_allocation(conversions, users, rng=np.random.default_rng(1), floor=0.05)
    assert first == again
    assert math.fsum(first.weights) == pytest.approx(1.0)
    assert min(first.weights) >= 0.05
    assert max(range(3), key=lambda i: first.weights[i]) == 2
    assert first.weights[2] > 0.8  # 8% against 5.8% on 1,000 users each is nearly certain
    with pytest.raises(ValueError):
        thompson_allocation(conversions, users, rng=np.random.default_rng(1), floor=0.4)


def test_unknown_arms_share_traffic_evenly() -> None:
    allocation = thompson_allocation([0] * 16, [0] * 16, rng=np.random.default_rng(2), floor=0.02)
    assert all(abs(w - 1 / 16) < 0.01 for w in allocation.weights)


def test_a_bandit_run_shifts_traffic_to_the_best_arm_and_earns_more_than_an_even_split() -> None:
    """Twenty daily runs of 2,000 users over three arms converting at 5%, 6% and 8%."""
    rng = np.random.default_rng(3)
    truth = np.array([0.05, 0.06, 0.08])
    conversions, users = np.zeros(3, dtype=int), np.zeros(3, dtype=int)
    weights = np.full(3, 1 / 3)
    for _ in range(20):
        sent = rng.multinomial(2000, weights)
        conversions += rng.binomial(sent, truth)
        users += sent
        weights = np.array(thompson_allocation(conversions.tolist(), users.tolist(), rng=rng).weights)
    assert weights[2] > 0.8
    assert conversions.sum() > 20 * 2000 * truth.mean() + 3 * math.sqrt(40_000 * 0.07)  # beats the even split


def test_promotion_needs_every_condition() -> None:
    rng = np.random.default_rng(4)
    clear = promotion_decision([500, 650], [5000, 5000], rng=rng)
    assert clear.winner == 1 and clear.chance_to_be_best > 0.95 and clear.expected_loss < 0.001

    early = promotion_decision([5, 20], [100, 100], rng=rng)
    assert early.winner is None and "fewer than 1000" in early.reason

    tie = promotion_decision([500, 505], [5000, 5000], rng=rng)
    assert tie.winner is None and "chance to be best" in tie.reason

    strict = PromotionRule(min_chance_to_be_best=0.9, max_expected_loss=1e-7, min_users_per_arm=1000)
    costly = promotion_decision([100, 130], [1000, 1000], rng=rng, rule=strict)
    assert costly.chance_to_be_best > 0.9 and costly.winner is None and "expected loss" in costly.reason
