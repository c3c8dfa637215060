"""Holm's step-down correction across an experiment's variants.

With k variants each tested against control at alpha, the chance that at least one null variant "wins" is
up to k alpha. Holm's procedure keeps that family-wise error rate at alpha under any dependence between
the tests (they share the control arm), and it is uniformly more powerful than Bonferroni (Holm 1979,
"A Simple Sequentially Rejective Multiple Test Procedure", Scandinavian Journal of Statistics 6(2)).
"""

import math
from collections.abc import Sequence


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given: reject hypothesis i at level alpha iff adjusted_i <= alpha.

    With the m p-values sorted, p_(1) <= ... <= p_(m), the adjusted value of the j-th is
    max_{i <= j} min(1, (m - i + 1) p_(i)) (Wright 1992, "Adjusted P-Values for Simultaneous Inference",
    Biometrics 48(4)); the running maximum keeps them monotone in the raw p-values. nan p-values (tests that
    could not be computed) stay nan and do not count towards m, as R's `p.adjust` does.
    """
    present = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(present)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(present):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-values must lie in [0, 1], got {p}")
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted
