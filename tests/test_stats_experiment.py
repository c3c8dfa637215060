"""`analyze` end to end: every figure against scipy (or the module that computes it), and its refusals."""

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats

from engine.stats.experiment import MAX_ARMS, analyze
from engine.stats.multiple import holm_adjust


def experiment(seed: int = 0, users: int = 30_000, with_pre: bool = True) -> pl.DataFrame:
    """Control and two variants (one better at converting), revenue correlated with the pre-period's."""
    rng = np.random.default_rng(seed)
    arm = rng.choice(["control", "b", "c"], size=users, p=[0.5, 0.25, 0.25])
    pre = rng.gamma(2.0, 5.0, size=users)
    rate = np.select([arm == "b", arm == "c"], [0.115, 0.10], 0.10)
    converted = rng.random(users) < rate
    value = np.where(converted, 0.8 * pre + rng.gamma(2.0, 10.0, size=users), 0.0)
    columns = {"arm": arm, "converted": converted, "value": value}
    if with_pre:
        columns["pre_value"] = pre
    return pl.DataFrame(columns)


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    return experiment()


@pytest.fixture(scope="module")
def result(frame: pl.DataFrame):
    return analyze(frame, control="control", expected_weights={"control": 2, "b": 1, "c": 1}, draws=50_000)


def arrays(frame: pl.DataFrame, arm: str) -> dict[str, np.ndarray]:
    part = frame.filter(pl.col("arm") == arm)
    return {c: part[c].to_numpy() for c in part.columns if c != "arm"}


def test_arm_summaries(frame: pl.DataFrame, result) -> None:
    assert [a.arm for a in result.arms] == ["control", "b", "c"]
    for summary in result.arms:
        data = arrays(frame, summary.arm)
        conversions = int(data["converted"].sum())
        assert (summary.users, summary.conversions) == (len(data["value"]), conversions)
        wilson = stats.binomtest(conversions, summary.users).proportion_ci(0.95, method="wilson")
        assert summary.conversion_interval.lower == pytest.approx(wilson.low, rel=1e-9)
        assert summary.conversion_interval.upper == pytest.approx(wilson.high, rel=1e-9)
        t_interval = stats.ttest_1samp(data["value"], 0.0).confidence_interval(0.95)
        assert summary.value_per_user == pytest.approx(data["value"].mean(), rel=1e-12)
        assert summary.value_interval.lower == pytest.approx(t_interval.low, rel=1e-9)
        assert summary.value_interval.upper == pytest.approx(t_interval.high, rel=1e-9)
    assert math.fsum(a.chance_to_be_best for a in result.arms) == pytest.approx(1.0)
    assert result.arm("b").chance_to_be_best > 0.9  # the better converter


def test_comparisons_match_scipy(frame: pl.DataFrame, result) -> None:
    control = arrays(frame, "control")
    raw_p, cuped_p = [], []
    y, x = frame["value"].to_numpy(), frame["pre_value"].to_numpy()
    theta = np.cov(y, x, ddof=1)[0, 1] / np.var(x, ddof=1)
    assert result.cuped_theta == pytest.approx(theta, rel=1e-9)
    for conversion, value, cuped in zip(result.conversion, result.value, result.value_cuped, strict=True):
        variant = arrays(frame, conversion.variant)
        table = [
            [control["converted"].sum(), (~control["converted"]).sum()],
            [variant["converted"].sum(), (~variant["converted"]).sum()],
        ]
        chi2 = stats.chi2_contingency(np.array(table), correction=False)
        assert conversion.test.p_value == pytest.approx(chi2.pvalue, rel=1e-9)
        welch = stats.ttest_ind(variant["value"], control["value"], equal_var=False)
        assert value.test.statistic == pytest.approx(welch.statistic, rel=1e-9)
        assert value.test.p_value == pytest.approx(welch.pvalue, rel=1e-9)
        adjusted = stats.ttest_ind(
            variant["value"] - theta * (variant["pre_value"] - x.mean()),
            control["value"] - theta * (control["pre_value"] - x.mean()),
            equal_var=False,
        )
        assert cuped.test.p_value == pytest.approx(adjusted.pvalue, rel=1e-9)
        assert 0.0 < cuped.variance_reduction < 1.0
        assert cuped.sequential.interval.width < value.sequential.interval.width
        raw_p.append(value.test.p_value)
        cuped_p.append(cuped.test.p_value)
    assert [c.p_value_holm for c in result.value] == pytest.approx(holm_adjust(raw_p))
    assert [c.p_value_holm for c in result.value_cuped] == pytest.approx(holm_adjust(cuped_p))
    assert result.conversion[0].bayes.chance_to_beat_control > 0.95
    for comparison in (*result.conversion, *result.value):
        assert comparison.sequential.interval.width > comparison.test.interval.width  # paid for daily looks


def test_srm_against_the_configured_weights(frame: pl.DataFrame, result) -> None:
    counts = [frame.filter(pl.col("arm") == a).height for a in ("control", "b", "c")]
    reference = stats.chisquare(counts, np.array([0.5, 0.25, 0.25]) * sum(counts))
    assert result.srm.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert (result.srm.arms, result.srm.observed) == (("control", "b", "c"), tuple(counts))
    assert not result.srm.flagged
    # read against an even three-way split, the same users are a glaring mismatch
    assert analyze(frame, control="control", draws=1000).srm.flagged


def test_a_configured_arm_without_users_is_an_srm() -> None:
    frame = experiment(users=4000, with_pre=False)
    result = analyze(frame, control="control", expected_weights={"control": 2, "b": 1, "c": 1, "d": 1}, draws=1000)
    assert result.srm.observed[-1] == 0 and result.srm.flagged
    assert result.srm.arms == ("control", "b", "c", "d")  # the configured order, the arm without users named
    assert [c.variant for c in result.conversion] == ["b", "c"]
    assert result.value_cuped == () and result.cuped_theta is None


def test_lazy_input_and_a_seeded_generator_give_the_same_result(frame: pl.DataFrame) -> None:
    eager = analyze(frame, control="control", rng=np.random.default_rng(9), draws=5000)
    lazy = analyze(frame.lazy(), control="control", rng=np.random.default_rng(9), draws=5000)
    assert eager == lazy


def test_a_non_integer_prior_falls_back_to_the_monte_carlo() -> None:
    frame = experiment(users=6000, with_pre=False)
    result = analyze(frame, control="control", prior=(0.5, 0.5), draws=200_000)
    closed = analyze(frame, control="control", prior=(1.0, 1.0), draws=1000)
    for fallback, exact in zip(result.conversion, closed.conversion, strict=True):
        # a Jeffreys prior and a uniform one barely differ at 1,500 users; Monte Carlo error is ~0.001
        assert fallback.bayes.chance_to_beat_control == pytest.approx(exact.bayes.chance_to_beat_control, abs=0.01)


def test_an_aa_experiment_through_analyze_rejects_at_alpha() -> None:
    """300 A/A/A experiments (2,000 users, 10% conversion) through the whole entry point: the smallest
    Holm-adjusted conversion p-value is below 0.05 in at most 5% of them (plus three binomial standard
    errors), the family-wise rate that Holm promises."""
    rng = np.random.default_rng(77)
    experiments, rejected = 300, 0
    for _ in range(experiments):
        frame = pl.DataFrame(
            {
                "arm": rng.choice(["a", "b", "c"], size=2000),
                "converted": rng.random(2000) < 0.1,
                "value": rng.exponential(5.0, size=2000),
            }
        )
        result = analyze(frame, control="a", draws=500, rng=rng)
        rejected += min(c.p_value_holm for c in result.conversion) < 0.05
    assert rejected / experiments <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / experiments)


def test_refusals() -> None:
    frame = experiment(users=3000)
    with pytest.raises(ValueError, match="lacks columns"):
        analyze(frame.drop("value"), control="control")
    with pytest.raises(ValueError, match="null"):
        analyze(
            frame.with_columns(pl.when(pl.col("value") > 30).then(None).otherwise("value").alias("value")),
            control="control",
        )
    with pytest.raises(ValueError, match="control arm"):
        analyze(frame, control="nobody")
    with pytest.raises(ValueError, match="not in the expected weights"):
        analyze(frame, control="control", expected_weights={"control": 1, "b": 1})
    with pytest.raises(ValueError, match="at least two"):
        analyze(pl.concat([frame, frame.head(1).with_columns(pl.lit("lonely").alias("arm"))]), control="control")
    many = pl.DataFrame(
        {"arm": [f"arm{i % (MAX_ARMS + 1)}" for i in range(200)], "converted": [False] * 200, "value": [0.0] * 200}
    )
    with pytest.raises(ValueError, match="at most 16"):
        analyze(many, control="arm0")


def test_sixteen_arms_and_no_conversions_yet() -> None:
    frame = pl.DataFrame(
        {"arm": [f"arm{i % MAX_ARMS:02d}" for i in range(3200)], "converted": [False] * 3200, "value": [0.0] * 3200}
    )
    result = analyze(frame, control="arm00", draws=2000)
    assert len(result.conversion) == MAX_ARMS - 1
    assert all(math.isnan(c.test.p_value) and math.isnan(c.p_value_holm) for c in result.conversion)
    assert all(c.sequential.p_value == 1.0 for c in result.conversion)
    assert all(c.bayes.chance_to_beat_control == pytest.approx(0.5) for c in result.conversion)
