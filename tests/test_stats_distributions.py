"""The distribution functions against scipy: relative agreement to 1e-9 (they are built for ~1e-13)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats

from engine.stats import distributions as d

REL = 1e-9
TINY = 1e-290  # below this, both sides are in the subnormal range where relative error means nothing

degrees = st.one_of(
    st.floats(min_value=0.5, max_value=50.0),
    st.floats(min_value=50.0, max_value=1e7),
)


def close(ours: float, reference: float) -> bool:
    return math.isclose(ours, reference, rel_tol=REL, abs_tol=TINY)


@settings(max_examples=200, deadline=None)
@given(t=st.floats(min_value=-60.0, max_value=60.0), df=degrees)
def test_student_t_cdf_and_sf_match_scipy(t: float, df: float) -> None:
    assert close(d.t_cdf(t, df), stats.t.cdf(t, df))
    assert close(d.t_sf(t, df), stats.t.sf(t, df))


@pytest.mark.parametrize("df", [1.0, 2.5, 29.9, 30.0, 31.0, 1e3, 2e5, 3e6, 5e7])
@pytest.mark.parametrize("t", [-40.0, -6.0, -2.0, -1.0, -0.3, -1e-7, 0.0, 1e-7, 0.3, 1.0, 1.96, 2.0, 6.0, 40.0])
def test_student_t_grid_crosses_every_evaluation_path(t: float, df: float) -> None:
    """Continued fraction on both sides of its switch, and the large-df expansion on both sides of t ~ 1."""
    assert close(d.t_sf(t, df), stats.t.sf(t, df))
    assert close(d.t_cdf(t, df), stats.t.cdf(t, df))


def test_student_t_limits() -> None:
    assert d.t_sf(math.inf, 5.0) == 0.0
    assert d.t_cdf(-math.inf, 5.0) == 0.0
    assert d.t_sf(0.0, 7.0) == 0.5
    assert close(d.t_sf(1.5, math.inf), stats.norm.sf(1.5))
    assert close(d.t_pdf(0.7, 4.5), stats.t.pdf(0.7, 4.5))
    with pytest.raises(ValueError):
        d.t_sf(1.0, 0.0)


@settings(max_examples=150, deadline=None)
@given(x=st.floats(min_value=0.0, max_value=3000.0), df=st.integers(min_value=1, max_value=200))
def test_chi_square_sf_matches_scipy(x: float, df: int) -> None:
    assert close(d.chi2_sf(x, df), stats.chi2.sf(x, df))
    assert close(d.chi2_cdf(x, df), stats.chi2.cdf(x, df))


@settings(max_examples=150, deadline=None)
@given(x=st.floats(min_value=-38.0, max_value=38.0))
def test_normal_cdf_matches_scipy(x: float) -> None:
    assert close(d.normal_cdf(x), stats.norm.cdf(x))
    assert close(d.normal_sf(x), stats.norm.sf(x))
    assert close(d.normal_pdf(x), stats.norm.pdf(x))


@settings(max_examples=150, deadline=None)
@given(p=st.one_of(st.floats(min_value=1e-300, max_value=1e-3), st.floats(min_value=1e-3, max_value=1.0 - 1e-16)))
def test_normal_ppf_matches_scipy(p: float) -> None:
    assert close(d.normal_ppf(p), stats.norm.ppf(p))


def test_normal_ppf_edges() -> None:
    assert d.normal_ppf(0.0) == -math.inf
    assert d.normal_ppf(1.0) == math.inf
    with pytest.raises(ValueError):
        d.normal_ppf(1.5)


@settings(max_examples=200, deadline=None)
@given(
    p=st.one_of(st.floats(min_value=1e-12, max_value=1e-2), st.floats(min_value=1e-2, max_value=1.0 - 1e-12)),
    df=st.floats(min_value=0.5, max_value=1e6),
)
def test_student_t_ppf_matches_scipy(p: float, df: float) -> None:
    """Absolute 1e-12 near the centre: scipy's quantile loses its relative accuracy there (see below)."""
    assert math.isclose(d.t_ppf(p, df), stats.t.ppf(p, df), rel_tol=REL, abs_tol=1e-12)


def cauchy_cdf(t: float) -> float:
    """Student t with 1 df, in a form exact in both tails: 1/2 + atan(t)/pi = atan(1/|t|)/pi for t < 0."""
    return math.atan(1.0 / -t) / math.pi if t < 0 else 0.5 + math.atan(t) / math.pi


def t2_cdf(t: float) -> float:
    """Student t with 2 df: 1/2 + t / (2 sqrt(2 + t^2)) = 1 / (s (s + |t|)), s = sqrt(2 + t^2), for t < 0."""
    s = math.sqrt(2.0 + t * t)
    return 1.0 / (s * (s - t)) if t < 0 else 0.5 + t / (2.0 * s)


@pytest.mark.parametrize("p", [1e-300, 1e-200, 1e-60, 1e-20, 1e-3, 0.3, 0.5 - 1e-9, 0.5 + 2**-52, 0.9, 1 - 1e-12])
def test_student_t_ppf_inverts_the_closed_forms(p: float) -> None:
    """Where the t has a closed form (Johnson, Kotz & Balakrishnan, Continuous Univariate Distributions,
    vol. 2, ch. 28): 1 and 2 df, from the far tail (where scipy's quantile is off by a factor of 3 at
    p = 1e-140, df = 2) to a hair from the centre (where it is off by 45% at p = 1/2 + 2^-52, df = 1)."""
    if 0.25 < p < 0.75:
        assert math.isclose(d.t_ppf(p, 1.0), math.tan(math.pi * (p - 0.5)), rel_tol=1e-13)
    assert math.isclose(cauchy_cdf(d.t_ppf(p, 1.0)), p, rel_tol=1e-12)
    assert math.isclose(t2_cdf(d.t_ppf(p, 2.0)), p, rel_tol=1e-12)
    assert math.isclose(cauchy_cdf(-1e250), d.t_cdf(-1e250, 1.0), rel_tol=1e-12)


@pytest.mark.parametrize("df", [0.7, 13.3, 1e4])
@pytest.mark.parametrize("p", [1e-200, 1e-60, 1e-20, 0.5 + 1e-15])
def test_student_t_ppf_round_trips(p: float, df: float) -> None:
    t = d.t_ppf(p, df)
    assert math.isclose(d.t_cdf(t, df), p, rel_tol=1e-12)
    assert d.t_ppf(1.0 - 1e-3, df) == pytest.approx(-d.t_ppf(1e-3, df), rel=1e-14)


@settings(max_examples=150, deadline=None)
@given(
    a=st.floats(min_value=0.1, max_value=2000.0),
    b=st.floats(min_value=0.1, max_value=2000.0),
    x=st.one_of(st.just(0.0), st.floats(min_value=1e-300, max_value=1.0)),
)
def test_incomplete_beta_matches_scipy(a: float, b: float, x: float) -> None:
    """Above 1e-200 only: scipy itself is off by ~1e-3 relative near 1e-270 (a = 3668, b = 28, x = 0.82),
    and by 13% for subnormal x (I_x(1/2, 2) ~ 1.5 sqrt(x): 3.33e-162 at x = 5e-324, scipy says 2.89e-162)."""
    reference = special.betainc(a, b, x)
    if reference > 1e-200 or reference == 0.0:
        assert close(d.beta_inc(a, b, x), reference)
    assert math.isclose(d.beta_inc(0.5, 2.0, 5e-324), 1.5 * math.sqrt(5e-324), rel_tol=1e-12)


@settings(max_examples=150, deadline=None)
@given(a=st.floats(min_value=0.05, max_value=1e4), b=st.floats(min_value=0.05, max_value=1e4))
def test_log_beta_matches_scipy(a: float, b: float) -> None:
    assert math.isclose(d.log_beta(a, b), special.betaln(a, b), rel_tol=REL, abs_tol=1e-12)


@settings(max_examples=150, deadline=None)
@given(a=st.floats(min_value=0.05, max_value=1e9), b=st.floats(min_value=0.05, max_value=1e9))
def test_log_beta_satisfies_its_recurrence(a: float, b: float) -> None:
    """B(a, b + 1) = B(a, b) b / (a + b) (Abramowitz & Stegun 6.2.2 with Gamma(z + 1) = z Gamma(z)), checked
    where scipy's betaln is itself off: 1e-11 relative at (1, 13046), 1e-9 at (406093, 1/8)."""
    expected = d.log_beta(a, b) + math.log(b / (a + b))
    assert math.isclose(d.log_beta(a, b + 1.0), expected, rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(d.log_beta(a, 1.0), -math.log(a), rel_tol=1e-14, abs_tol=1e-15)
