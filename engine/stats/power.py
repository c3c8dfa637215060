"""Sample sizes for a planned experiment: users per arm for a given effect, alpha and power.

The sequential intervals also use the planned size: their mixture is tuned to be tightest there.
"""

import math

from engine.stats.distributions import normal_ppf


def sample_size_two_proportions(
    control_rate: float, variant_rate: float, *, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Users per arm for the two-sided pooled two-proportion z-test to detect control_rate -> variant_rate.

    n = (z_{1-alpha/2} sqrt(2 pbar qbar) + z_power sqrt(p_c q_c + p_v q_v))^2 / (p_v - p_c)^2 with
    pbar = (p_c + p_v) / 2: the null variance under the pooled rate, the alternative's under the two rates
    (Fleiss, Levin & Paik, Statistical Methods for Rates and Proportions, 3rd ed., 2003, ch. 4, without the
    continuity correction, since the test here uses none).
    """
    for rate in (control_rate, variant_rate):
        if not 0.0 < rate < 1.0:
            raise ValueError(f"rates must lie in (0, 1), got {rate}")
    if control_rate == variant_rate:
        raise ValueError("the rates must differ")
    mean = (control_rate + variant_rate) / 2.0
    null_sd = math.sqrt(2.0 * mean * (1.0 - mean))
    alternative_sd = math.sqrt(control_rate * (1.0 - control_rate) + variant_rate * (1.0 - variant_rate))
    numerator = normal_ppf(1.0 - alpha / 2.0) * null_sd + normal_ppf(power) * alternative_sd
    return math.ceil(numerator**2 / (variant_rate - control_rate) ** 2)


def sample_size_two_means(sd: float, difference: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """Users per arm for a two-sided two-sample test of means to detect `difference` with common `sd`.

    n = 2 sd^2 (z_{1-alpha/2} + z_power)^2 / difference^2, the normal-theory size (Chow, Shao & Wang, Sample
    Size Calculations in Clinical Research, 2nd ed., 2008, ch. 3); Welch's t needs a fraction of a user more
    at the sizes experiments run at.
    """
    if sd <= 0.0 or difference == 0.0:
        raise ValueError(f"need sd > 0 and a non-zero difference, got sd={sd}, difference={difference}")
    z = normal_ppf(1.0 - alpha / 2.0) + normal_ppf(power)
    return math.ceil(2.0 * sd * sd * z * z / difference**2)
