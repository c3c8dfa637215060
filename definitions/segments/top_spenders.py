"""The top 10% of buyers by purchase value over the last 30 days.

A relative threshold (a percentile of this population, recomputed each run) is beyond the rule language, which
compares with constants: this is what Python segments are for.
"""

from datetime import timedelta

import polars as pl

from engine.behaviour import Behaviour


def segment(users: pl.LazyFrame, behaviour: Behaviour) -> pl.LazyFrame:
    spend = (
        behaviour.events.filter(
            (pl.col("event") == "purchase") & (pl.col("ts") >= behaviour.as_of - timedelta(days=30))
        )
        .group_by("user_id")
        .agg(pl.col("value").sum().alias("spend"))
    )
    return spend.filter(pl.col("spend") >= pl.col("spend").quantile(0.9, interpolation="lower")).select("user_id")
