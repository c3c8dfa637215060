"""What the population does on one UTC day: sessions, browsing, carts, purchases and organic message opens.

A day is generated from the users table alone, so days can be produced one at a time (bounded memory at any
scale) and any day can be regenerated on its own with the same bytes. Columns starting with `_` are internal.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import polars as pl

from engine.sample.catalog import popular_item
from engine.sample.population import SIGNUP_METHODS, utc_millisecond
from engine.sample.rng import lookup, pick, trials, uniform

SLOTS = 8
"""At most this many sessions per user and day; a user with rate r opens each slot with chance r / SLOTS."""
WEEKEND_LIFT = 1.15
MAX_VIEWS = 20
PUSH_OPEN_RATE = 0.03
"""Daily chance that an active user who can receive pushes opens one (sent by some other tool: organic)."""
EMAIL_CLICK_RATE = 0.02
LATE_SHARE = 0.01
"""Share of events that arrive a day after they happened (offline devices, delayed batches)."""
EVENT_CODES = {
    "sign_up": 0, "app_open": 1, "view_item": 2, "add_to_cart": 3, "purchase": 4, "push_open": 5,
    "email_click": 6,
}  # fmt: skip
OUTPUT = ("user_id", "event", "ts", "value", "properties", "arrival")


def day_events(
    users: pl.LazyFrame, catalog: pl.DataFrame, offsets: pl.DataFrame, *, start: date, day: int, days: int, seed: int
) -> pl.LazyFrame:
    """Every event that happens on UTC date `start + day`, with the date it arrives on.

    Args:
        users: `build_users` output.
        catalog: `build_catalog` output.
        offsets: `utc_offsets` covering the day.
        start: the first day of the period.
        day: which day, counted from `start`.
        days: the period's length; events after its end are cut off, as a real snapshot would be.
        seed: the random seed.
    """
    today = start + timedelta(days=day)
    midnight = datetime.combine(today, time(), tzinfo=UTC)
    uid, d = pl.col("_uid"), pl.lit(day)

    def draw(stream: str, *keys: pl.Expr) -> pl.Expr:
        return uniform(seed, stream, uid, d, *keys)

    def at_local_time(stream: str, *keys: pl.Expr) -> pl.Expr:
        return pl.lit(midnight) + pl.duration(
            milliseconds=utc_millisecond(seed, stream, [uid, d, *keys], pl.col("_offset"))
        )

    lift = WEEKEND_LIFT if today.weekday() >= 5 else 1.0
    active = (
        users.lazy()
        .filter(pl.col("_signup_day") <= day, pl.col("_last_day") >= day)
        .join(
            offsets.lazy().filter(pl.col("_day") == today).select("_zone", "_offset"),
            on="_zone",
            how="left",
            maintain_order="left",
        )
    )
    slot = pl.col("_k")
    onboarding = active.filter(pl.col("_signup_day") == day).with_columns(
        pl.lit(SLOTS, dtype=pl.Int64).alias("_k"),
        (pl.col("signed_up_at") + pl.duration(milliseconds=5_000 + draw("onboard") * 115_000)).alias("_start"),
    )
    returning = (
        active.filter(pl.col("_signup_day") < day)
        .with_columns(pl.int_ranges(0, SLOTS, dtype=pl.Int64).alias("_k"))
        .explode("_k")
        .filter(draw("session", slot) < pl.col("_sessions_per_day") * lift / SLOTS)
        .with_columns(at_local_time("session", slot).alias("_start"))
    )
    sessions = pl.concat([onboarding, returning])
    item = pl.col("_item")
    views = (
        sessions.with_columns(
            pl.int_ranges(
                0,
                trials(draw("views", slot), pl.col("_views") / (pl.col("_views") + 1.0)).clip(0, MAX_VIEWS),
                dtype=pl.Int64,
            ).alias("_j")
        )
        .explode("_j")
        .filter(pl.col("_j").is_not_null())
        .with_columns(popular_item(draw("item", slot, pl.col("_j"))).alias("_item"))
        .with_columns(
            (
                pl.col("_start")
                + pl.duration(milliseconds=(pl.col("_j") + 1) * 40_000 + draw("view_gap", slot, pl.col("_j")) * 30_000)
            ).alias("ts"),
            lookup(catalog["item_id"], item, pl.String()).alias("item_id"),
            lookup(catalog["category"], item, pl.String()).alias("category"),
            lookup(catalog["price"], item, pl.Float64()).alias("price"),
            (draw("cart", slot, pl.col("_j")) < pl.col("_cart_rate")).alias("_carted"),
            pl.format("{}-{}-{}", "user_id", pl.lit(today.strftime("%Y%m%d")), slot).alias("cart_id"),
        )
    )
    carts = views.filter(pl.col("_carted")).with_columns(
        (pl.col("ts") + pl.duration(milliseconds=2_000 + draw("cart_gap", slot, pl.col("_j")) * 15_000)).alias("ts")
    )
    purchases = (
        carts.group_by("_uid", "user_id", "_k", maintain_order=True)
        .agg(
            pl.col("price").sum().round(2).alias("value"),
            pl.len().alias("items"),
            pl.col("ts").max().alias("_last"),
            pl.col("cart_id").first(),
            pl.col("_buy_rate").first(),
        )
        .filter(draw("buy", slot) < pl.col("_buy_rate"))
        .with_columns(
            (pl.col("_last") + pl.duration(milliseconds=30_000 + draw("checkout", slot) * 270_000)).alias("ts")
        )
    )
    signups = active.filter(pl.col("_signup_day") == day)
    can_push = pl.col("push_consent") & (pl.col("_tokens") > 0)
    pushes = active.filter(can_push & (draw("push_open") < PUSH_OPEN_RATE))
    clicks = active.filter(pl.col("email_consent") & (draw("email_click") < EMAIL_CLICK_RATE))
    organic = pl.struct(pl.lit("organic").alias("source")).struct.json_encode()
    method = lookup(SIGNUP_METHODS, pick(draw("signup_method"), (0.5, 0.3, 0.2)), pl.String())
    events = pl.concat(
        [
            _events(signups, "sign_up", pl.col("signed_up_at"),
                    pl.struct(method.alias("method"), pl.col("platform")).struct.json_encode()),
            _events(sessions, "app_open", pl.col("_start"), None),
            _events(views, "view_item", pl.col("ts"), pl.struct("category", "item_id", "price").struct.json_encode()),
            _events(carts, "add_to_cart", pl.col("ts"), pl.struct("cart_id", "item_id", "price").struct.json_encode()),
            _events(purchases, "purchase", pl.col("ts"), pl.struct("cart_id", "items").struct.json_encode(),
                    value=pl.col("value")),
            _events(pushes, "push_open", at_local_time("push_open"), organic),
            _events(clicks, "email_click", at_local_time("email_click"), organic),
        ]
    )  # fmt: skip
    period_end = datetime.combine(start + timedelta(days=days), time(), tzinfo=UTC)
    late = uniform(seed, "late", uid, pl.col("ts").dt.epoch("ms"), pl.col("_code")) < LATE_SHARE
    return events.filter(pl.col("ts") < pl.lit(period_end)).select(
        *OUTPUT[:-1],
        (pl.col("ts").dt.date() + pl.duration(days=late.cast(pl.Int64))).alias("arrival"),
    )


def _events(
    frame: pl.LazyFrame, name: str, ts: pl.Expr, properties: pl.Expr | None, *, value: pl.Expr | None = None
) -> pl.LazyFrame:
    """One kind of event in the common shape, keeping what the late-arrival draw needs."""
    return frame.select(
        pl.col("_uid"),
        pl.col("user_id"),
        pl.lit(name).alias("event"),
        ts.dt.truncate("1ms").alias("ts"),
        (value if value is not None else pl.lit(None, dtype=pl.Float64)).alias("value"),
        (properties if properties is not None else pl.lit(None, dtype=pl.String)).alias("properties"),
        pl.lit(EVENT_CODES[name], dtype=pl.Int64).alias("_code"),
    )
