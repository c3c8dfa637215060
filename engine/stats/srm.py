"""Sample-ratio mismatch: do the arms' user counts fit the split the experiment was configured with?

A mismatch means assignment or logging is broken (a bot filter hitting one arm, a redirect losing users),
and every other number in the report is then suspect, whatever its p-value. The check is Pearson's
chi-square goodness-of-fit test against the configured weights, flagged at p < 0.001 by convention
(Fabijan et al. 2019, "Diagnosing Sample Ratio Mismatch in Online Controlled Experiments", KDD; Kohavi,
Tang & Xu, Trustworthy Online Controlled Experiments, 2020, ch. 21): with the traffic experiments see, a
strict threshold keeps false alarms rare while real mismatches still show p-values far below it.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from engine.stats.distributions import chi2_sf

SRM_THRESHOLD = 0.001


@dataclass(frozen=True)
class SrmCheck:
    """The chi-square statistic, its p-value and whether it is below the threshold.

    `arms`, `observed` and `expected` run in parallel, one entry per arm, so a report can name each count
    (an arm configured but never assigned is there with 0 users) without being told the order separately.
    """

    statistic: float
    df: int
    p_value: float
    flagged: bool
    threshold: float
    arms: tuple[str, ...]
    observed: tuple[int, ...]
    expected: tuple[float, ...]


def srm_check(
    observed: Sequence[int],
    weights: Sequence[float],
    *,
    arms: Sequence[str] | None = None,
    threshold: float = SRM_THRESHOLD,
) -> SrmCheck:
    """Pearson's chi-square of the observed counts against `weights` (normalised to sum to one).

    chi2 = sum (O_i - E_i)^2 / E_i with E_i = N w_i, on k - 1 degrees of freedom (Pearson 1900).

    Args:
        observed: users per arm.
        weights: the configured split, in the same order (any scale).
        arms: the arms' names, in the same order; "arm 1", "arm 2", ... when omitted, for bare counts.
        threshold: the p-value below which the check is flagged.
    """
    names = tuple(arms) if arms is not None else tuple(f"arm {i + 1}" for i in range(len(observed)))
    if len(observed) != len(weights) or len(observed) < 2:
        raise ValueError(f"need matching counts and weights for two or more arms, got {observed}, {weights}")
    if len(names) != len(observed) or len(set(names)) != len(names):
        raise ValueError(f"need one distinct name per count, got {names} for {observed}")
    if any(w <= 0 for w in weights) or any(o < 0 for o in observed):
        raise ValueError(f"weights must be positive and counts non-negative, got {weights}, {observed}")
    total = sum(observed)
    if total == 0:
        raise ValueError("no users to check")
    weight_sum = math.fsum(weights)
    expected = tuple(total * w / weight_sum for w in weights)
    statistic = math.fsum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    df = len(observed) - 1
    p_value = chi2_sf(statistic, df)
    return SrmCheck(
        statistic=statistic,
        df=df,
        p_value=p_value,
        flagged=p_value < threshold,
        threshold=threshold,
        arms=names,
        observed=tuple(int(o) for o in observed),
        expected=expected,
    )
