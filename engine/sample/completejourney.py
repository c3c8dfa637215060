"""Converting 84.51°'s Complete Journey (see shared/data/completejourney/README.md) into a nudge snapshot.

Mapping: a household is a user; each basket is one `purchase` (value = sum of its lines' sales_value); each
campaign a household received is a `campaign_received` at 00:00 of the campaign's start_date; each coupon
redemption is a `coupon_redeemed` at the last microsecond (23:59:59.999999) of its redemption_date.

Times are taken as UTC wall-clock time. The source timestamps are naive store-local times in unknown zones,
and the data README's reference segment windows (e.g. [2017-12-02 00:00, 2018-01-01 00:00)) are stated on those
naive times; reading them as UTC keeps every recomputed number equal to the reference instead of shifting
baskets across window edges by an invented offset.

Data traps, handled on purpose:
- 86 baskets are timestamped 2018-01-01 (early hours, week 53). They are real baskets and are kept, landing in
  the date=2018-01-01 partition; windows ending at 2018-01-01 00:00 exclude them by themselves.
- 11,226 lines have sales_value <= 0 (returns, free items, full discounts). They stay in their basket's sum,
  so 478 baskets have a value <= 0. Dropping them would lose baskets (the count must stay 155,848) and bend
  "how many purchases" segments; consumers who want revenue can filter on value.
- redemption_date has a day but no time. It reads as "some time that day", after a campaign that started that
  day: the README counts redemptions between start_date and end_date inclusive. So a redemption sits at its
  day's last microsecond, after a same-day receipt at 00:00 (and after a journey entered on it by that day's
  run), yet still in its own day's partition, rollup and windows. Joins with baskets' seconds still need a
  day-level rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, time
from pathlib import Path

import polars as pl

from engine.contract import EVENTS_DIR, USERS_DIR, partition_name

SOURCE_FILES = ("transactions", "campaigns", "campaign_descriptions", "coupon_redemptions", "demographics")
LAST_MICROSECOND = time(23, 59, 59, 999_999)


@dataclass(frozen=True)
class ConvertReport:
    """What the conversion wrote, with the trap counts so a reader sees them handled."""

    out_dir: Path
    users: int
    purchases: int
    campaign_received: int
    coupon_redeemed: int
    partitions: int
    nonpositive_baskets: int
    baskets_after_2017: int


def purchases(transactions: pl.LazyFrame) -> pl.LazyFrame:
    """One `purchase` per basket. `items` counts product lines, not units (quantity is 0 on 8,869 lines)."""
    return (
        transactions.group_by("basket_id")
        .agg(
            pl.col("household_id").first(),
            pl.col("store_id").first(),
            pl.col("transaction_timestamp").first().alias("ts"),
            pl.col("sales_value").sum().alias("value"),
            pl.len().alias("items"),
        )
        .select(
            pl.col("household_id").cast(pl.String).alias("user_id"),
            pl.lit("purchase").alias("event"),
            _utc(pl.col("ts")).alias("ts"),
            pl.col("value").round(2).alias("value"),
            pl.struct("basket_id", "items", "store_id").struct.json_encode().alias("properties"),
        )
    )


def campaigns_received(campaigns: pl.LazyFrame, descriptions: pl.LazyFrame) -> pl.LazyFrame:
    """One `campaign_received` per (household, campaign), at the campaign's start."""
    return campaigns.join(descriptions, on="campaign_id", how="left").select(
        pl.col("household_id").cast(pl.String).alias("user_id"),
        pl.lit("campaign_received").alias("event"),
        _utc(pl.col("start_date")).alias("ts"),
        pl.lit(None, dtype=pl.Float64).alias("value"),
        pl.struct("campaign_id", "campaign_type", pl.col("end_date").dt.date().cast(pl.String).alias("end_date"))
        .struct.json_encode()
        .alias("properties"),
    )


def coupons_redeemed(redemptions: pl.LazyFrame) -> pl.LazyFrame:
    """One `coupon_redeemed` per redemption row, at the last microsecond of its day.

    The source gives a date only. The day's end stands for "some time that day", which orders a redemption
    after a campaign receipt of the same day (at 00:00) and keeps it in its own day, so the data README's
    inclusive rule (redeemed between start_date and end_date) holds for a journey entered on the receipt.
    """
    return redemptions.select(
        pl.col("household_id").cast(pl.String).alias("user_id"),
        pl.lit("coupon_redeemed").alias("event"),
        _utc(pl.col("redemption_date").dt.combine(LAST_MICROSECOND)).alias("ts"),
        pl.lit(None, dtype=pl.Float64).alias("value"),
        pl.struct("campaign_id", "coupon_upc").struct.json_encode().alias("properties"),
    )


def households(transactions: pl.LazyFrame, demographics: pl.LazyFrame) -> pl.LazyFrame:
    """Users: every household with a basket, a synthesized address, first basket as signup, demographics.

    The address is `household-<id>@example.com` (a reserved domain: nothing is ever delivered) with email
    consent, so email journeys have someone to target; there are no push tokens. `signed_up_at` is the first
    basket, i.e. first seen, since the data has no signup date. Country and locale are US/en-US because the
    publisher is a US grocer; the time zone is UTC to match how the times are read.
    """
    first_seen = transactions.group_by("household_id").agg(pl.col("transaction_timestamp").min().alias("first"))
    return (
        first_seen.join(demographics, on="household_id", how="left")
        .sort("household_id")
        .select(
            pl.col("household_id").cast(pl.String).alias("user_id"),
            pl.format("household-{}@example.com", "household_id").alias("email"),
            pl.lit([], dtype=pl.List(pl.String)).alias("push_tokens"),
            pl.lit("UTC").alias("timezone"),
            pl.lit("en-US").alias("locale"),
            pl.lit("US").alias("country"),
            pl.lit(True).alias("email_consent"),
            pl.lit(False).alias("push_consent"),
            _utc(pl.col("first")).alias("signed_up_at"),
            pl.exclude("household_id", "first"),
        )
    )


def convert_completejourney(source: Path, out: Path) -> ConvertReport:
    """Write `out/users/users.parquet` and `out/events/date=YYYY-MM-DD/part-0.parquet` from the source folder.

    Args:
        source: the folder holding the Complete Journey Parquet files.
        out: where to write; must not already hold `events/` or `users/`.
    """
    for sub in (EVENTS_DIR, USERS_DIR):
        if (out / sub).exists():
            raise FileExistsError(f"{out / sub} already exists; convert into an empty folder")
    missing = [name for name in SOURCE_FILES if not (source / f"{name}.parquet").exists()]
    if missing:
        raise FileNotFoundError(f"{source}: missing {', '.join(f'{name}.parquet' for name in missing)}")
    tables = {name: pl.scan_parquet(source / f"{name}.parquet") for name in SOURCE_FILES}
    baskets = purchases(tables["transactions"])
    received = campaigns_received(tables["campaigns"], tables["campaign_descriptions"])
    redeemed = coupons_redeemed(tables["coupon_redemptions"])
    users_plan = households(tables["transactions"], tables["demographics"])
    events, users = pl.collect_all(
        [
            pl.concat([baskets, received, redeemed]).sort("ts", "user_id", "event", "properties"),
            users_plan,
        ]
    )
    (out / USERS_DIR).mkdir(parents=True)
    users.write_parquet(out / USERS_DIR / "users.parquet")
    parts = events.with_columns(pl.col("ts").dt.date().alias("_day")).partition_by("_day", as_dict=True)
    for (day,), part in sorted(parts.items()):
        folder = out / EVENTS_DIR / partition_name(day)
        folder.mkdir(parents=True)
        part.drop("_day").write_parquet(folder / "part-0.parquet")
    counts = dict(events["event"].value_counts().rows())
    bought = events.filter(pl.col("event") == "purchase")
    return ConvertReport(
        out_dir=out,
        users=users.height,
        purchases=counts.get("purchase", 0),
        campaign_received=counts.get("campaign_received", 0),
        coupon_redeemed=counts.get("coupon_redeemed", 0),
        partitions=len(parts),
        nonpositive_baskets=bought.filter(pl.col("value") <= 0).height,
        baskets_after_2017=bought.filter(pl.col("ts").dt.date() > date(2017, 12, 31)).height,
    )


def _utc(naive: pl.Expr) -> pl.Expr:
    return naive.dt.cast_time_unit("us").dt.replace_time_zone("UTC")
