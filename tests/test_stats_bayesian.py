"""Bayesian comparisons: Evan Miller's closed form against numerical integration (over scipy's Beta functions)
and Monte Carlo."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from engine.stats.bayesian import (
    BetaPosterior,
    beta_comparison,
    beta_monte_carlo,
    expected_loss,
    normal_comparison,
    prob_greater,
)
from engine.stats.samples import Moments

NODES, WEIGHTS = np.polynomial.legendre.leggauss(100)


def integrate(f, low: float, high: float, panels: int = 40) -> float:
    """Composite Gauss-Legendre (100 nodes a panel): exact to ~1e-15 for these smooth integrands."""
    edges = np.linspace(low, high, panels + 1)
    half = (edges[1:] - edges[:-1])[:, None] / 2
    x = (edges[:-1, None] + edges[1:, None]) / 2 + half * NODES
    return float((f(x) * WEIGHTS * half).sum())


def _support(*posteriors: BetaPosterior) -> tuple[float, float]:
    """Where the posteriors' mass is, so that no panel misses a narrow peak."""
    means = [p.mean for p in posteriors]
    sds = [math.sqrt(p.alpha * p.beta / ((p.alpha + p.beta) ** 2 * (p.alpha + p.beta + 1))) for p in posteriors]
    return max(0.0, min(means) - 40 * max(sds)), min(1.0, max(means) + 40 * max(sds))


def integrated_prob_greater(x: BetaPosterior, y: BetaPosterior) -> float:
    """P(X > Y) = integral of f_Y(t) P(X > t) dt (scipy's Beta density and regularized incomplete beta)."""
    return integrate(
        lambda t: stats.beta.pdf(t, y.alpha, y.beta) * special.betaincc(x.alpha, x.beta, t), *_support(x, y)
    )


def integrated_expected_loss(chosen: BetaPosterior, other: BetaPosterior) -> float:
    """E[max(O - C, 0)] = integral of f_C(c) (E[O; O > c] - c P(O > c)) dc."""
    return integrate(
        lambda c: (
            stats.beta.pdf(c, chosen.alpha, chosen.beta)
            * (
                other.mean * special.betaincc(other.alpha + 1, other.beta, c)
                - c * special.betaincc(other.alpha, other.beta, c)
            )
        ),
        *_support(chosen, other),
    )


@st.composite
def posterior(draw: st.DrawFn) -> BetaPosterior:
    users = draw(st.integers(min_value=0, max_value=3000))
    return BetaPosterior.from_counts(draw(st.integers(min_value=0, max_value=users)), users)


@settings(max_examples=100, deadline=None)
@given(x=posterior(), y=posterior())
def test_evan_millers_formula_matches_numerical_integration(x: BetaPosterior, y: BetaPosterior) -> None:
    assert prob_greater(x, y) == pytest.approx(integrated_prob_greater(x, y), abs=1e-9)
    assert prob_greater(x, y) + prob_greater(y, x) == pytest.approx(1.0, abs=1e-10)


@settings(max_examples=100, deadline=None)
@given(x=posterior(), y=posterior())
def test_expected_loss_matches_numerical_integration(x: BetaPosterior, y: BetaPosterior) -> None:
    assert expected_loss(x, y) == pytest.approx(integrated_expected_loss(x, y), abs=1e-9)
    # max(D, 0) - max(-D, 0) = D, so the two losses differ by exactly the difference of the means
    assert expected_loss(x, y) - expected_loss(y, x) == pytest.approx(y.mean - x.mean, abs=1e-12)


def test_the_closed_form_holds_at_large_counts() -> None:
    """Fifty thousand conversions a side (the sum has that many terms), against quadrature."""
    control = BetaPosterior.from_counts(50_000, 500_000)
    variant = BetaPosterior.from_counts(50_450, 500_000)
    assert prob_greater(variant, control) == pytest.approx(integrated_prob_greater(variant, control), abs=1e-9)
    assert expected_loss(variant, control) == pytest.approx(integrated_expected_loss(variant, control), abs=1e-10)


def test_non_integer_priors_need_the_monte_carlo() -> None:
    with pytest.raises(ValueError):
        prob_greater(BetaPosterior(2.5, 10.0), BetaPosterior(3.5, 9.0))
    # one integer side is enough: the sum runs over it
    half = BetaPosterior(2.5, 10.0)
    assert prob_greater(half, BetaPosterior(3.0, 9.0)) == pytest.approx(
        integrated_prob_greater(half, BetaPosterior(3.0, 9.0)), abs=1e-9
    )


@pytest.mark.parametrize(
    ("control", "variant"),
    [((100, 1000), (120, 1000)), ((30, 1000), (28, 1000)), ((5, 40), (9, 45))],
)
def test_closed_form_agrees_with_monte_carlo_within_its_error(
    control: tuple[int, int], variant: tuple[int, int]
) -> None:
    """Evan Miller's formula against 400,000 joint draws, within 4 Monte Carlo standard errors."""
    c, v = BetaPosterior.from_counts(*control), BetaPosterior.from_counts(*variant)
    draws = 400_000
    mc = beta_monte_carlo([c, v], rng=np.random.default_rng(11), draws=draws)
    closed = beta_comparison(c, v)
    chance = closed.chance_to_beat_control
    assert abs(mc.chance_to_beat_control[1] - chance) <= 4 * math.sqrt(chance * (1 - chance) / draws)
    samples = np.random.default_rng(12).beta([c.alpha, v.alpha], [c.beta, v.beta], size=(draws, 2))
    loss_sd = float(np.maximum(samples[:, 0] - samples[:, 1], 0).std())
    assert abs(mc.expected_loss_vs_control[1] - closed.expected_loss_variant) <= 4 * loss_sd / math.sqrt(draws)
    assert mc.chance_to_beat_control[0] == 0.0 and mc.expected_loss_vs_control[0] == 0.0


def test_monte_carlo_is_deterministic_given_the_generator() -> None:
    arms = [BetaPosterior.from_counts(c, 1000) for c in (100, 104, 97, 110)]
    first = beta_monte_carlo(arms, rng=np.random.default_rng(5), draws=20_000)
    assert first == beta_monte_carlo(arms, rng=np.random.default_rng(5), draws=20_000)
    assert first != beta_monte_carlo(arms, rng=np.random.default_rng(6), draws=20_000)
    assert sum(first.chance_to_be_best) == pytest.approx(1.0)
    assert max(range(4), key=lambda i: first.chance_to_be_best[i]) == 3
    assert min(range(4), key=lambda i: first.expected_loss_vs_best[i]) == 3


@settings(max_examples=100, deadline=None)
@given(
    d=st.floats(min_value=-3.0, max_value=3.0),
    var_c=st.floats(min_value=0.1, max_value=50.0),
    var_v=st.floats(min_value=0.1, max_value=50.0),
)
def test_normal_comparison_matches_integration(d: float, var_c: float, var_v: float) -> None:
    control, variant = Moments(400, 10.0, var_c), Moments(300, 10.0 + d, var_v)
    result = normal_comparison(control, variant)
    s = math.sqrt(var_c / 400 + var_v / 300)
    posterior = stats.norm(d, s)
    assert result.chance_to_beat_control == pytest.approx(posterior.sf(0.0), abs=1e-12)
    loss_variant = integrate(lambda x: -x * posterior.pdf(x), min(d - 40 * s, 0.0), 0.0)
    loss_control = integrate(lambda x: x * posterior.pdf(x), 0.0, max(d + 40 * s, 0.0))
    assert result.expected_loss_variant == pytest.approx(loss_variant, abs=1e-10)
    assert result.expected_loss_control == pytest.approx(loss_control, abs=1e-10)
