"""One arm's summary (users, mean, variance) and its confidence intervals.

Every comparison in this package works from these three numbers per arm, so an experiment of millions of
users is reduced once (by Polars, in `experiment.py`) and the statistics never see the rows.
"""

import math
from dataclasses import dataclass

import numpy as np

from engine.stats.distributions import normal_ppf, t_ppf


@dataclass(frozen=True)
class Interval:
    """A closed interval [lower, upper]; nan bounds mean the interval is undefined (no variance yet)."""

    lower: float
    upper: float

    def contains(self, value: float) -> bool:
        """Whether `value` lies inside the interval (bounds included)."""
        return self.lower <= value <= self.upper

    @property
    def width(self) -> float:
        """upper - lower."""
        return self.upper - self.lower


@dataclass(frozen=True)
class Moments:
    """An arm's sample size, mean and variance of a per-user metric.

    For a conversion the mean is the rate p and the variance the Bernoulli p (1 - p) (the maximum-likelihood
    variance that the unpooled two-proportion standard error uses); for a value per user the sample variance
    with n - 1 in the denominator.
    """

    n: int
    mean: float
    variance: float

    @classmethod
    def of_values(cls, values: np.ndarray) -> "Moments":
        """Moments of a sample (variance with ddof = 1, as Welch's test uses)."""
        array = np.asarray(values, dtype=float)
        if array.size < 2:
            raise ValueError(f"a sample variance needs at least two values, got {array.size}")
        return cls(int(array.size), float(array.mean()), float(array.var(ddof=1)))

    @classmethod
    def of_conversions(cls, conversions: int, users: int) -> "Moments":
        """Moments of a conversion rate: mean p, Bernoulli variance p (1 - p)."""
        if users <= 0 or not 0 <= conversions <= users:
            raise ValueError(f"need 0 <= conversions <= users and users > 0, got {conversions} of {users}")
        rate = conversions / users
        return cls(users, rate, rate * (1.0 - rate))

    @property
    def standard_error(self) -> float:
        """The standard error of the mean, sqrt(variance / n)."""
        return math.sqrt(self.variance / self.n)


def wilson_interval(conversions: int, users: int, *, alpha: float = 0.05) -> Interval:
    """The Wilson score interval for a proportion (Wilson 1927, JASA 22; Agresti & Coull 1998, Am. Stat. 52).

    Unlike the Wald interval p +/- z sqrt(p(1-p)/n) it keeps its coverage near 0 and 1, where conversion rates
    live, and it never leaves [0, 1].
    """
    if users <= 0 or not 0 <= conversions <= users:
        raise ValueError(f"need 0 <= conversions <= users and users > 0, got {conversions} of {users}")
    z = normal_ppf(1.0 - alpha / 2.0)
    rate = conversions / users
    z2n = z * z / users
    centre = (rate + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(rate * (1.0 - rate) / users + z2n / (4.0 * users))
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(moments: Moments, *, alpha: float = 0.05) -> Interval:
    """The one-sample Student t interval, mean +/- t_{1-alpha/2, n-1} s / sqrt(n).

    Exact for normal data and asymptotically right for any finite variance (Casella & Berger, Statistical
    Inference, 2nd ed., ch. 9); with n in the hundreds it is what a value-per-user report needs.
    """
    if moments.n < 2:
        return Interval(math.nan, math.nan)
    half = t_ppf(1.0 - alpha / 2.0, moments.n - 1) * moments.standard_error
    return Interval(moments.mean - half, moments.mean + half)
