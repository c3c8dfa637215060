"""Experiment statistics (issue 7): plain functions over per-arm summaries, numpy and Polars only.

- `distributions`: normal, Student t and chi-square functions (scipy-grade accuracy, no scipy at runtime).
- `samples`: an arm's moments and one-sample intervals (Wilson for rates, t for means).
- `frequentist`: two-proportion z-test, Welch's t-test, relative lift with a delta-method interval.
- `bayesian`: chance to beat control and expected loss (Beta-Binomial closed form, Monte Carlo, normal).
- `srm`: the sample-ratio-mismatch check.
- `multiple`: Holm's step-down adjustment across variants.
- `cuped`: variance reduction with a pre-period covariate.
- `sequential`: always-valid confidence sequences and p-values for daily looks.
- `power`: sample sizes for planning.
- `thompson`: Thompson-sampling allocation and the winner-promotion rule.
- `experiment`: `analyze`, the one entry point from per-user rows to an `ExperimentResult`.
"""
