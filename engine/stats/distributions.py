"""The distribution functions the statistics need, in plain Python: normal, Student t and chi-square.

scipy is a development dependency only, so the runtime computes these itself, to ~1e-13 relative wherever
the value is representable, and the tests hold them to scipy:

- normal cdf / sf from `math.erfc`, which keeps full relative accuracy in both tails (`1 - cdf` would not);
- normal ppf is Wichura's AS241 (PPND16, accurate to about 1 part in 1e16), as CPython's
  `statistics.NormalDist.inv_cdf` implements it;
- Student t cdf / sf through the regularized incomplete beta, chi-square sf through the regularized upper
  incomplete gamma, both evaluated by their continued fractions with the modified Lentz method
  (Press et al., Numerical Recipes, 3rd ed., sections 6.2 and 6.4); for many degrees of freedom near the
  centre, where that continued fraction is ill-conditioned, DiDonato & Morris' asymptotic expansion BGRAT
  (ACM TOMS 18(3), 1992, "Algorithm 708");
- the power prefactors x^a (1-x)^b / B(a, b) and x^a e^-x / Gamma(a) in DiDonato & Morris' form, with
  Stirling's series split off so the large log-gamma terms cancel analytically instead of numerically:
  plain `lgamma` differences lose about 1e-9 relative accuracy at a million degrees of freedom;
- the t quantile by Newton's method on the cdf above, so it is exactly as accurate.
"""

import math
from collections.abc import Callable
from statistics import NormalDist

_EPS = 1e-16
_TINY = 1e-300
_MAX_ITERATIONS = 100_000
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_STANDARD_NORMAL = NormalDist()


def normal_cdf(x: float) -> float:
    """P(Z <= x) for a standard normal Z, via erfc so the lower tail keeps its relative accuracy."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def normal_sf(x: float) -> float:
    """P(Z > x) for a standard normal Z, via erfc so the upper tail keeps its relative accuracy."""
    return 0.5 * math.erfc(x / math.sqrt(2.0))


def normal_pdf(x: float) -> float:
    """The standard normal density."""
    return math.exp(-0.5 * x * x - _HALF_LOG_2PI)


def normal_ppf(p: float) -> float:
    """The standard normal quantile: Wichura's AS241 (Applied Statistics 37, 1988), via `statistics.NormalDist`.

    Returns -inf / inf at p = 0 / 1, as scipy does; refuses probabilities outside [0, 1].
    """
    _check_probability(p)
    if p == 0.0:
        return -math.inf
    if p == 1.0:
        return math.inf
    return _STANDARD_NORMAL.inv_cdf(p)


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom (df > 0, need not be an integer).

    P(|T| > |t|) = I_x(df/2, 1/2) with x = df / (df + t^2) (Abramowitz & Stegun 26.7.1, 26.5.27).
    """
    tail = _t_tail(t, df)
    return tail if t < 0 else 1.0 - tail


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with `df` degrees of freedom; exact in the upper tail, not 1 - cdf."""
    tail = _t_tail(t, df)
    return tail if t > 0 else 1.0 - tail


def t_pdf(t: float, df: float) -> float:
    """Student's t density with `df` degrees of freedom."""
    return math.exp(_t_log_pdf(t, df))


def t_ppf(p: float, df: float) -> float:
    """The Student t quantile: Newton's method on log P(T > t) against log t, safeguarded by bisection.

    The start is the Cornish-Fisher expansion around the normal quantile (Abramowitz & Stegun 26.7.5). In
    those coordinates the tail is close to a straight line (P(T > t) ~ t^-df), so Newton converges in a few
    steps from the centre to p = 1e-300.
    """
    _check_probability(p)
    _check_df(df)
    if p == 0.0:
        return -math.inf
    if p == 1.0:
        return math.inf
    if p == 0.5:
        return 0.0
    # Solve for t > 0, then mirror: near the centre on P(0 < T < t) = |p - 1/2| (exact in floating point
    # for p in [1/4, 3/4]), elsewhere on the tail P(T > t) = min(p, 1 - p); each side computed directly.
    central = abs(p - 0.5) < 0.25
    target = math.log(abs(p - 0.5) if central else min(p, 1.0 - p))
    z = -normal_ppf(min(p, 1.0 - p))
    start = (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )
    u = math.log(start if math.isfinite(start) and start > 0 else z)
    low, high = -math.inf, math.inf
    for _ in range(200):
        t = math.exp(u)
        value = _t_centre(t, df) if central else t_sf(t, df)
        log_value = math.log(value) if value > 0.0 else -math.inf
        too_small_t = log_value < target if central else log_value > target
        if too_small_t:
            low = u
        else:
            high = u
        if value > 0.0:
            slope = math.exp(u + _t_log_pdf(t, df) - log_value)  # |d log value / d log t|
            candidate = u + (target - log_value) / slope if central else u + (log_value - target) / slope
        else:
            candidate = math.nan
        if not low < candidate < high:
            if math.isinf(low) or math.isinf(high):
                candidate = u + (1.0 if math.isinf(high) else -1.0)
            else:
                candidate = 0.5 * (low + high)
        if abs(candidate - u) <= 2 * _EPS * max(1.0, abs(u)):
            u = candidate
            break
        u = candidate
    # log t is only resolved to |log t| * 1e-16; a last Newton step applied as a factor gets t to 1e-16.
    t = math.exp(u)
    value = _t_centre(t, df) if central else t_sf(t, df)
    if value > 0.0:
        log_value = math.log(value)
        slope = math.exp(u + _t_log_pdf(t, df) - log_value)
        step = (target - log_value) / slope if central else (log_value - target) / slope
        if abs(step) < 1e-8:
            t *= math.exp(step)
    return t if p > 0.5 else -t


def chi2_sf(x: float, df: float) -> float:
    """P(X > x) for a chi-square with `df` degrees of freedom: Q(df/2, x/2), the regularized upper gamma."""
    _check_df(df)
    if math.isnan(x):
        return math.nan
    if x <= 0.0:
        return 1.0
    return gamma_q(0.5 * df, 0.5 * x)


def chi2_cdf(x: float, df: float) -> float:
    """P(X <= x) for a chi-square with `df` degrees of freedom: P(df/2, x/2), the regularized lower gamma."""
    _check_df(df)
    if math.isnan(x):
        return math.nan
    if x <= 0.0:
        return 0.0
    return gamma_p(0.5 * df, 0.5 * x)


def beta_inc(a: float, b: float, x: float, y: float | None = None) -> float:
    """The regularized incomplete beta I_x(a, b); pass y = 1 - x when it is known more accurately than 1 - x.

    The continued fraction (Numerical Recipes 6.4.5) converges fast for x < (a + 1) / (a + b + 2); on the
    other side the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) is used.
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"beta_inc needs a > 0 and b > 0, got a={a}, b={b}")
    if y is None:
        y = 1.0 - x
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"beta_inc needs 0 <= x <= 1, got {x}")
    if x == 0.0:
        return 0.0
    if y == 0.0:
        return 1.0
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(_log_beta_prefactor(a, b, x, y)) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(_log_beta_prefactor(b, a, y, x)) * _beta_continued_fraction(b, a, y) / b


def gamma_p(a: float, x: float) -> float:
    """The regularized lower incomplete gamma P(a, x) (Numerical Recipes 6.2)."""
    if a <= 0 or x < 0:
        raise ValueError(f"gamma_p needs a > 0 and x >= 0, got a={a}, x={x}")
    if x == 0.0:
        return 0.0
    if x < a + 1.0:
        return _gamma_series(a, x)
    return 1.0 - _gamma_continued_fraction(a, x)


def gamma_q(a: float, x: float) -> float:
    """The regularized upper incomplete gamma Q(a, x) = 1 - P(a, x), accurate in its own tail (NR 6.2)."""
    if a <= 0 or x < 0:
        raise ValueError(f"gamma_q needs a > 0 and x >= 0, got a={a}, x={x}")
    if x == 0.0:
        return 1.0
    if x < a + 1.0:
        return 1.0 - _gamma_series(a, x)
    return _gamma_continued_fraction(a, x)


def log_beta(a: float, b: float) -> float:
    """log B(a, b), with Stirling's series split off so that large arguments do not cancel numerically.

    log B(a, b) = -(a log(c/a) + b log(c/b) + 1/2 log(ab / (2 pi c)) + d(c) - d(a) - d(b)), c = a + b, where
    d is the remainder of Stirling's series (DiDonato & Morris 1992).
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"log_beta needs a > 0 and b > 0, got a={a}, b={b}")
    c = a + b
    return -(
        a * math.log1p(b / a)
        + b * math.log1p(a / b)
        + 0.5 * math.log(a / (2.0 * math.pi) * (b / c))
        + _stirling_remainder(c)
        - _stirling_remainder(a)
        - _stirling_remainder(b)
    )


def _t_tail(t: float, df: float) -> float:
    """P(T > |t|) = I_x(df/2, 1/2) / 2, x = df / (df + t^2).

    Far from the centre, or for few degrees of freedom, the continued fraction is well conditioned. For many
    degrees of freedom near the centre x is within O(1/df) of 1, where the continued fraction's terms cancel
    (~1e-9 relative at a million degrees of freedom): there the asymptotic expansion for a large and b small
    is used instead (DiDonato & Morris 1992, BGRAT), as TOMS 708 and Boost do.
    """
    _check_df(df)
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    if math.isinf(df):
        return normal_sf(abs(t))
    a = 0.5 * df
    if abs(t) > 1e150:
        # t^2 overflows and x = df / t^2 may underflow; at such x the series I_x(a, b) =
        # x^a (1 - x)^b / (a B(a, b)) (1 + O(x)) is exact to rounding after its first term.
        log_x = math.log(df) - 2.0 * math.log(abs(t))
        return 0.5 * math.exp(a * log_x - math.log(a) - log_beta(a, 0.5))
    t2 = t * t
    x = df / (df + t2)
    y = t2 / (df + t2)
    if a >= 15.0 and x >= 0.7 and a * y > 0.49:
        return 0.5 * _beta_large_a_small_b(a, 0.5, -math.log1p(t2 / df))
    return 0.5 * beta_inc(a, 0.5, x, y)


def _t_centre(t: float, df: float) -> float:
    """P(0 < T < t) for t > 0, = I_y(1/2, df/2) / 2 with y = t^2 / (df + t^2), without subtracting from 1/2."""
    t2 = t * t
    return 0.5 * beta_inc(0.5, 0.5 * df, t2 / (df + t2), df / (df + t2))


def _beta_large_a_small_b(a: float, b: float, log_x: float) -> float:
    """I_x(a, b) for a >= 15, b <= 1 and x not far below 1, by DiDonato & Morris' expansion (TOMS 708, BGRAT).

    With nu = a + (b - 1)/2 and z = -nu log x, I_x(a, b) = G (Q(b, z) + H sum_{n>=1} p_n J_n), where
    G = Gamma(a + b) / (Gamma(a) nu^b), H = e^-z z^b / Gamma(b), Q is the regularized upper gamma, the J_n
    follow J_n = ((b + 2n - 2)(b + 2n - 1) J_{n-1} + (z + b + 2n - 1)(log x / 2)^(2n - 2)) / (4 nu^2) from
    J_0 = Q / H, and p_n = (b - 1)/(2n + 1)! + (1/n) sum_{i=1}^{n-1} (i b - n) p_{n-i} / (2i + 1)!.
    """
    b_minus_1 = b - 1.0
    nu = a + 0.5 * b_minus_1
    z = -nu * log_x
    log_g = (
        (a - 0.5) * math.log1p(b / a)
        + b * math.log((a + b) / nu)
        - b
        + _stirling_remainder(a + b)
        - _stirling_remainder(a)
    )
    h = math.exp(-z + b * math.log(z) - math.lgamma(b))
    k = gamma_q(b, z)  # K_n = H J_n
    total = k
    v = 0.25 / (nu * nu)
    half_log_sq = 0.25 * log_x * log_x
    power = 1.0  # (log x / 2)^(2n - 2)
    inverse_factorials = [1.0]  # 1 / (2i + 1)!
    p = [1.0]
    for n in range(1, 60):
        b_2n = b + 2.0 * (n - 1)
        k = (b_2n * (b_2n + 1.0) * k + (z + b_2n + 1.0) * power * h) * v
        power *= half_log_sq
        inverse_factorials.append(inverse_factorials[-1] / ((2.0 * n) * (2.0 * n + 1.0)))
        p.append(
            b_minus_1 * inverse_factorials[n]
            + sum((i * b - n) * inverse_factorials[i] * p[n - i] for i in range(1, n)) / n
        )
        term = p[n] * k
        total += term
        if abs(term) <= _EPS * abs(total):
            break
    return math.exp(log_g) * total


def _t_log_pdf(t: float, df: float) -> float:
    """log of Student's t density; for huge |t| log(1 + t^2/df) is taken as 2 log|t| - log df."""
    _check_df(df)
    log_norm = -0.5 * math.log(df) - log_beta(0.5 * df, 0.5)
    size = abs(t)
    if size > 1e150:
        log_kernel = 2.0 * math.log(size) - math.log(df) + math.log1p(df / size / size)
    else:
        log_kernel = math.log1p(t * t / df)
    return log_norm - 0.5 * (df + 1.0) * log_kernel


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (Numerical Recipes `betacf`), by the modified Lentz method."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = _nonzero(1.0 - qab * x / qap)
    d = 1.0 / d
    h = d
    for m in range(1, _MAX_ITERATIONS):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 / _nonzero(1.0 + aa * d)
        c = _nonzero(1.0 + aa / c)
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 / _nonzero(1.0 + aa * d)
        c = _nonzero(1.0 + aa / c)
        delta = d * c
        h *= delta
        if abs(delta - 1.0) <= _EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge for a={a}, b={b}, x={x}")


def _gamma_series(a: float, x: float) -> float:
    """P(a, x) by its power series (Numerical Recipes `gser`), for x < a + 1."""
    term = total = 1.0 / a
    ap = a
    for _ in range(_MAX_ITERATIONS):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) <= abs(total) * _EPS:
            return total * math.exp(_log_gamma_prefactor(a, x))
    raise ArithmeticError(f"incomplete gamma series did not converge for a={a}, x={x}")


def _gamma_continued_fraction(a: float, x: float) -> float:
    """Q(a, x) by its continued fraction (Numerical Recipes `gcf`), modified Lentz, for x >= a + 1."""
    b = x + 1.0 - a
    c = 1.0 / _TINY
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITERATIONS):
        an = -i * (i - a)
        b += 2.0
        d = 1.0 / _nonzero(an * d + b)
        c = _nonzero(b + an / c)
        delta = d * c
        h *= delta
        if abs(delta - 1.0) <= _EPS:
            return math.exp(_log_gamma_prefactor(a, x)) * h
    raise ArithmeticError(f"incomplete gamma continued fraction did not converge for a={a}, x={x}")


def _log_beta_prefactor(a: float, b: float, x: float, y: float) -> float:
    """log(x^a y^b / B(a, b)) for y = 1 - x, in DiDonato & Morris' form.

    With c = a + b: a log(xc/a) + b log(yc/b) + 1/2 log(ab / (2 pi c)) + d(c) - d(a) - d(b). The linear
    parts of the two logarithms cancel exactly (a (xc/a - 1) = -b (yc/b - 1)), so they are dropped before
    summing: each term becomes a (log(1 + e) - e), small and accurate, near the distribution's mode.
    """
    c = a + b
    e_a = (b * x - a * y) / a  # xc/a - 1
    e_b = (a * y - b * x) / b  # yc/b - 1
    return (
        a * _log_minus_linear(lambda: math.log(x) + math.log1p(b / a), e_a)
        + b * _log_minus_linear(lambda: math.log(y) + math.log1p(a / b), e_b)
        + 0.5 * math.log(a / (2.0 * math.pi) * (b / c))
        + _stirling_remainder(c)
        - _stirling_remainder(a)
        - _stirling_remainder(b)
    )


def _log_gamma_prefactor(a: float, x: float) -> float:
    """log(x^a e^-x / Gamma(a)) = a (log(x/a) - (x/a - 1)) + 1/2 log(a / (2 pi)) - d(a)."""
    return (
        a * _log_minus_linear(lambda: math.log(x) - math.log(a), (x - a) / a)
        + 0.5 * math.log(a / (2.0 * math.pi))
        - _stirling_remainder(a)
    )


def _log_minus_linear(log_ratio: Callable[[], float], excess: float) -> float:
    """log(ratio) - excess, where excess = ratio - 1 computed accurately by the caller.

    Near ratio = 1 this is log1p(e) - e = -e^2/2 + e^3/3 - ..., summed as a series to keep its relative
    accuracy; far from 1 the caller's log of the ratio (from the logs of its factors, so that a subnormal x
    keeps what precision it has) is used directly, with no cancellation worth the name.
    """
    if excess <= -0.5 or excess >= 1.0:
        return log_ratio() - excess
    if abs(excess) > 0.1:
        return math.log1p(excess) - excess
    minus = -excess  # log1p(e) - e = -sum_{k>=2} (-e)^k / k
    power = minus
    total = 0.0
    for k in range(2, 60):
        power *= minus
        term = power / k
        total -= term
        if abs(term) <= _EPS * abs(total):
            break
    return total


def _stirling_remainder(z: float) -> float:
    """d(z) = log Gamma(z) - ((z - 1/2) log z - z + 1/2 log(2 pi)): Stirling's series for z >= 10.

    The series' coefficients are B_2k / (2k (2k - 1)) (Abramowitz & Stegun 6.1.40); below 10 the difference
    is taken directly, where `lgamma` is small enough for that to be exact to ~1e-15.
    """
    if z >= 10.0:
        inv = 1.0 / z
        inv2 = inv * inv
        series = -691.0 / 360360 + inv2 / 156.0
        for coefficient in (1.0 / 1188, -1.0 / 1680, 1.0 / 1260, -1.0 / 360, 1.0 / 12):
            series = coefficient + inv2 * series
        return inv * series
    return math.lgamma(z) - ((z - 0.5) * math.log(z) - z + _HALF_LOG_2PI)


def _nonzero(value: float) -> float:
    """Lentz's guard: a zero denominator is replaced by a tiny number (Numerical Recipes 5.2)."""
    return value if abs(value) >= _TINY else _TINY


def _check_probability(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a probability must lie in [0, 1], got {p}")


def _check_df(df: float) -> None:
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
