"""One entry point for an experiment's statistics: per-user rows in, every comparison against control out.

`analyze` reduces the rows to per-arm moments in one Polars pass (collected once), then runs, for each
variant against control and for both metrics (conversion and value per user):

- the fixed-horizon test (two-proportion z / Welch's t) with its interval, and the relative lift;
- Holm-adjusted p-values across the variants, one family per metric (and one for the CUPED analysis);
- the Bayesian chance to beat control and expected losses (closed form for conversion, normal for value);
- the always-valid confidence sequence and p-value, for daily looks;
- with a `pre_value` column, the CUPED-adjusted value comparison;

plus, for the whole experiment, the sample-ratio-mismatch check against the configured weights and each
arm's chance to be best (Monte Carlo over all arms' conversion posteriors). If the SRM check is flagged the
other figures are still computed, but a report should lead with the flag: they cannot be trusted.

Input columns: `arm` (str), `converted` (bool), `value` (float; 0 for users without value), and optionally
`pre_value` (float, the same metric before assignment; 0 for users without history). Nulls are refused:
what a missing value means is the caller's decision, not this module's. Intent-to-treat: every assigned user
is a row, including those who were never sent anything.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from engine.stats.bayesian import (
    BayesComparison,
    BetaPosterior,
    MonteCarloComparison,
    beta_comparison,
    beta_monte_carlo,
    normal_comparison,
)
from engine.stats.cuped import cuped_comparison, with_cuped
from engine.stats.frequentist import Lift, ProportionTest, WelchTest, relative_lift, two_proportion_ztest, welch_ttest
from engine.stats.multiple import holm_adjust
from engine.stats.samples import Interval, Moments, mean_interval, wilson_interval
from engine.stats.sequential import SequentialResult, sequential_test
from engine.stats.srm import SRM_THRESHOLD, SrmCheck, srm_check

MAX_ARMS = 16
DEFAULT_PLANNED_USERS_PER_ARM = 10_000

_REQUIRED = ("arm", "converted", "value")


@dataclass(frozen=True)
class ArmSummary:
    """One arm: counts, conversion rate (Wilson interval), value per user (t interval), chance to be best."""

    arm: str
    users: int
    conversions: int
    conversion_rate: float
    conversion_interval: Interval
    value_per_user: float
    value_interval: Interval
    value_sd: float
    chance_to_be_best: float
    expected_loss_vs_best: float


@dataclass(frozen=True)
class Comparison:
    """One variant against control on one metric."""

    variant: str
    test: ProportionTest | WelchTest
    p_value_holm: float
    lift: Lift
    bayes: BayesComparison
    sequential: SequentialResult
    sequential_p_value_holm: float
    variance_reduction: float | None = None  # CUPED only: the share of the difference's variance removed


@dataclass(frozen=True)
class ExperimentResult:
    """Everything `analyze` computed; comparisons are in the order of `arms[1:]` (control is `arms[0]`)."""

    control: str
    alpha: float
    arms: tuple[ArmSummary, ...]
    srm: SrmCheck
    conversion: tuple[Comparison, ...]
    value: tuple[Comparison, ...]
    value_cuped: tuple[Comparison, ...]
    cuped_theta: float | None
    planned_users_per_arm: int
    draws: int

    def arm(self, name: str) -> ArmSummary:
        """The summary of the arm called `name`."""
        for summary in self.arms:
            if summary.arm == name:
                return summary
        raise KeyError(name)


def analyze(
    users: pl.DataFrame | pl.LazyFrame,
    *,
    control: str,
    alpha: float = 0.05,
    expected_weights: Mapping[str, float] | None = None,
    srm_threshold: float = SRM_THRESHOLD,
    planned_users_per_arm: int = DEFAULT_PLANNED_USERS_PER_ARM,
    prior: tuple[float, float] = (1.0, 1.0),
    rng: np.random.Generator | None = None,
    draws: int = 100_000,
) -> ExperimentResult:
    """Analyze an experiment of up to 16 arms from one row per assigned user.

    Args:
        users: rows with `arm`, `converted`, `value` and optionally `pre_value` (see the module docstring).
        control: the control arm's name.
        alpha: the significance level of tests and intervals (1 - alpha coverage).
        expected_weights: the configured split, arm -> weight (any scale); equal weights over the arms seen
            when omitted. An arm configured but absent from the rows counts as 0 users in the SRM check.
        srm_threshold: the SRM check's p-value threshold.
        planned_users_per_arm: the control arm's users at which the experiment expects to decide (variants
            scale by their weights); the sequential intervals are tightest there, and valid at every size.
        prior: the Beta prior of the conversion rates.
        rng: the Generator for the Monte Carlo chance to be best; a fixed seed (0) when omitted, so the
            same rows always give the same result.
        draws: Monte Carlo draws.
    """
    frame = users.lazy()
    columns = frame.collect_schema().names()
    missing = [c for c in _REQUIRED if c not in columns]
    if missing:
        raise ValueError(f"the users frame lacks columns {missing}")
    has_pre = "pre_value" in columns
    checked = [*_REQUIRED, "pre_value"] if has_pre else list(_REQUIRED)
    frame = frame.select(
        pl.col("arm").cast(pl.String),
        pl.col("converted").cast(pl.Boolean),
        pl.col("value").cast(pl.Float64),
        *([pl.col("pre_value").cast(pl.Float64)] if has_pre else []),
    )
    if has_pre:
        frame = with_cuped(frame, metric="value", covariate="pre_value", alias="value_cuped", theta_alias="theta")
    stats = _arm_moments(frame, checked, has_pre).collect()
    nulls = {c: int(stats[f"nulls_{c}"].sum()) for c in checked}
    if any(nulls.values()):
        raise ValueError(f"null values in the users frame: {nulls}")

    names = _ordered_arms(stats["arm"].to_list(), control, expected_weights)
    rows = {row["arm"]: row for row in stats.iter_rows(named=True)}
    for name in names:
        if rows[name]["users"] < 2:
            raise ValueError(f"arm {name!r} has {rows[name]['users']} users; every arm needs at least two")
    srm = _srm(rows, names, expected_weights, srm_threshold)

    conversions = {a: Moments.of_conversions(rows[a]["conversions"], rows[a]["users"]) for a in names}
    values = {a: Moments(rows[a]["users"], rows[a]["value_mean"], rows[a]["value_var"]) for a in names}
    posteriors = {a: BetaPosterior.from_counts(rows[a]["conversions"], rows[a]["users"], prior) for a in names}
    summary = beta_monte_carlo(
        [posteriors[a] for a in names], rng=rng if rng is not None else np.random.default_rng(0), draws=draws
    )
    weights = _weights(names, expected_weights)
    planned = {a: planned_users_per_arm * (weights[control] + weights[a]) / weights[control] for a in names}

    variants = names[1:]
    conversion = _family(
        variants,
        tests={
            v: two_proportion_ztest(
                rows[control]["conversions"],
                rows[control]["users"],
                rows[v]["conversions"],
                rows[v]["users"],
                alpha=alpha,
            )
            for v in variants
        },
        moments=conversions,
        control=control,
        bayes={v: _beta_bayes(posteriors[control], posteriors[v], summary, i + 1) for i, v in enumerate(variants)},
        planned=planned,
        alpha=alpha,
    )
    value = _family(
        variants,
        tests={v: welch_ttest(values[control], values[v], alpha=alpha) for v in variants},
        moments=values,
        control=control,
        bayes={v: normal_comparison(values[control], values[v]) for v in variants},
        planned=planned,
        alpha=alpha,
    )
    value_cuped: tuple[Comparison, ...] = ()
    theta = None
    if has_pre:
        theta = float(rows[control]["theta"])
        adjusted = {a: Moments(rows[a]["users"], rows[a]["cuped_mean"], rows[a]["cuped_var"]) for a in names}
        cuped = {
            v: cuped_comparison(
                theta=theta,
                control_raw=values[control],
                variant_raw=values[v],
                control=adjusted[control],
                variant=adjusted[v],
                alpha=alpha,
            )
            for v in variants
        }
        value_cuped = _family(
            variants,
            tests={v: cuped[v].test for v in variants},
            moments=adjusted,
            control=control,
            bayes={v: normal_comparison(adjusted[control], adjusted[v]) for v in variants},
            planned=planned,
            alpha=alpha,
            variance_reduction={v: cuped[v].variance_reduction for v in variants},
        )

    arms = tuple(
        ArmSummary(
            arm=a,
            users=rows[a]["users"],
            conversions=rows[a]["conversions"],
            conversion_rate=conversions[a].mean,
            conversion_interval=wilson_interval(rows[a]["conversions"], rows[a]["users"], alpha=alpha),
            value_per_user=values[a].mean,
            value_interval=mean_interval(values[a], alpha=alpha),
            value_sd=values[a].variance ** 0.5,
            chance_to_be_best=summary.chance_to_be_best[i],
            expected_loss_vs_best=summary.expected_loss_vs_best[i],
        )
        for i, a in enumerate(names)
    )
    return ExperimentResult(
        control=control,
        alpha=alpha,
        arms=arms,
        srm=srm,
        conversion=conversion,
        value=value,
        value_cuped=value_cuped,
        cuped_theta=theta,
        planned_users_per_arm=planned_users_per_arm,
        draws=draws,
    )


def _arm_moments(frame: pl.LazyFrame, checked: list[str], has_pre: bool) -> pl.LazyFrame:
    """One row per arm: users, conversions, value mean and variance (and the CUPED ones), null counts."""
    cuped = (
        [
            pl.col("value_cuped").mean().alias("cuped_mean"),
            pl.col("value_cuped").var(ddof=1).alias("cuped_var"),
            pl.col("theta").first().alias("theta"),
        ]
        if has_pre
        else []
    )
    return frame.group_by("arm").agg(
        pl.len().cast(pl.Int64).alias("users"),
        pl.col("converted").sum().cast(pl.Int64).alias("conversions"),
        pl.col("value").mean().alias("value_mean"),
        pl.col("value").var(ddof=1).alias("value_var"),
        *cuped,
        *[pl.col(c).null_count().alias(f"nulls_{c}") for c in checked],
    )


def _ordered_arms(seen: list[str | None], control: str, expected: Mapping[str, float] | None) -> list[str]:
    """Control first, then the variants in the configured order (or by name), refusing unknown arms."""
    if None in seen:
        raise ValueError("null values in the users frame: arm")
    present = [a for a in seen if a is not None]
    if control not in present:
        raise ValueError(f"control arm {control!r} has no users; arms seen: {sorted(present)}")
    if len(present) > MAX_ARMS:
        raise ValueError(f"{len(present)} arms; at most {MAX_ARMS} (control included) are supported")
    if expected is not None:
        unknown = sorted(set(present) - set(expected))
        if unknown:
            raise ValueError(f"arms {unknown} are not in the expected weights {dict(expected)}")
        order = [a for a in expected if a in present]
    else:
        order = sorted(present)
    return [control, *[a for a in order if a != control]]


def _weights(names: list[str], expected: Mapping[str, float] | None) -> dict[str, float]:
    return {a: float(expected[a]) if expected is not None else 1.0 for a in names}


def _srm(
    rows: Mapping[str, Mapping[str, int]],
    names: list[str],
    expected: Mapping[str, float] | None,
    threshold: float,
) -> SrmCheck:
    """The SRM check over every configured arm, named in the configured order; one absent counts as zero users."""
    arms = list(expected) if expected is not None else names
    observed = [rows[a]["users"] if a in rows else 0 for a in arms]
    weights = [expected[a] if expected is not None else 1.0 for a in arms]
    return srm_check(observed, weights, arms=arms, threshold=threshold)


def _beta_bayes(
    control: BetaPosterior, variant: BetaPosterior, summary: MonteCarloComparison, index: int
) -> BayesComparison:
    """The closed form when the prior allows it (integer alphas), else the Monte Carlo figures.

    E[max(V - C, 0)] = E[V - C] + E[max(C - V, 0)], so the loss of keeping control follows from the other.
    """
    try:
        return beta_comparison(control, variant)
    except ValueError:
        loss = summary.expected_loss_vs_control[index]
        return BayesComparison(summary.chance_to_beat_control[index], loss, variant.mean - control.mean + loss)


def _family(
    variants: list[str],
    *,
    tests: Mapping[str, ProportionTest | WelchTest],
    moments: Mapping[str, Moments],
    control: str,
    bayes: Mapping[str, BayesComparison],
    planned: Mapping[str, float],
    alpha: float,
    variance_reduction: Mapping[str, float] | None = None,
) -> tuple[Comparison, ...]:
    """The comparisons of one metric, with Holm applied across its variants."""
    sequential = {v: sequential_test(moments[control], moments[v], planned_n=planned[v], alpha=alpha) for v in variants}
    holm = holm_adjust([tests[v].p_value for v in variants])
    sequential_holm = holm_adjust([sequential[v].p_value for v in variants])
    return tuple(
        Comparison(
            variant=v,
            test=tests[v],
            p_value_holm=holm[i],
            lift=relative_lift(moments[control], moments[v], alpha=alpha),
            bayes=bayes[v],
            sequential=sequential[v],
            sequential_p_value_holm=sequential_holm[i],
            variance_reduction=variance_reduction[v] if variance_reduction is not None else None,
        )
        for i, v in enumerate(variants)
    )
