"""Context builders: the variables each template receives, computed for all of a run's messages at once.

One builder per template (several templates may share one). A builder declares a sample context with a value of
the right shape for every variable it provides: definitions are refused before a run when a template reads a
variable its builder does not provide. Data engineers add a template by adding a builder with `register`.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from engine.behaviour import Behaviour

BuildContext = Callable[[pl.DataFrame, pl.LazyFrame, Behaviour], pl.DataFrame]


@dataclass(frozen=True)
class ContextBuilder:
    """`build(messages, users, behaviour)` returns one row per message: `send_key` and the variables."""

    build: BuildContext
    sample: Mapping[str, Any]


_BUILDERS: dict[str, ContextBuilder] = {}


def register(*templates: str, sample: Mapping[str, Any]) -> Callable[[BuildContext], BuildContext]:
    def decorate(build: BuildContext) -> BuildContext:
        for template in templates:
            if template in _BUILDERS:
                raise ValueError(f"template {template!r} already has a context builder")
            _BUILDERS[template] = ContextBuilder(build=build, sample=sample)
        return build

    return decorate


def builder_for(template: str) -> ContextBuilder:
    try:
        return _BUILDERS[template]
    except KeyError:
        known = ", ".join(sorted(_BUILDERS)) or "none"
        raise KeyError(f"no context builder for template {template!r} (known: {known})") from None


BRAND = "Nudge Shop"
SHOP_URL = "https://shop.example.com"


@register(
    "cart_reminder",
    "cart_reminder_saved",
    "cart_push",
    sample={
        "first_name": "Ada",
        "item_name": "Trail running shoes",
        "item_price": 89.5,
        "cart_value": 120.0,
        "cart_url": f"{SHOP_URL}/cart/c-1",
        "unsubscribe_url": f"{SHOP_URL}/unsubscribe?u=u-1",
        "brand": BRAND,
    },
)
def cart_context(messages: pl.DataFrame, users: pl.LazyFrame, behaviour: Behaviour) -> pl.DataFrame:
    """The user's most recent cart before as_of: its last item and the cart's total."""
    prop = pl.col("properties").str.json_path_match
    carts = (
        behaviour.events.filter(pl.col("event") == "add_to_cart")
        .join(messages.lazy().select("user_id").unique(), on="user_id", how="semi")
        .select(
            "user_id",
            "ts",
            prop("$.cart_id").alias("cart_id"),
            pl.coalesce(prop("$.item_name"), prop("$.item_id")).alias("item_name"),
            prop("$.price").cast(pl.Float64, strict=False).alias("price"),
        )
    )
    last = carts.sort("ts", "item_name").group_by("user_id").agg(pl.all().last())
    totals = carts.group_by("user_id", "cart_id").agg(pl.col("price").sum().alias("cart_value"))
    names = users.select("user_id", _first_name(users).alias("first_name"))
    return (
        messages.lazy()
        .select("send_key", "user_id")
        .join(last, on="user_id", how="left")
        .join(totals, on=["user_id", "cart_id"], how="left")
        .join(names, on="user_id", how="left")
        .select(
            "send_key",
            pl.col("first_name").fill_null(""),
            pl.col("item_name").fill_null("your item"),
            pl.col("price").fill_null(0.0).alias("item_price"),
            pl.col("cart_value").fill_null(0.0),
            pl.concat_str(pl.lit(f"{SHOP_URL}/cart/"), pl.col("cart_id").fill_null("")).alias("cart_url"),
            pl.concat_str(pl.lit(f"{SHOP_URL}/unsubscribe?u="), pl.col("user_id")).alias("unsubscribe_url"),
            pl.lit(BRAND).alias("brand"),
        )
        .collect()
    )


def _first_name(users: pl.LazyFrame) -> pl.Expr:
    if "first_name" in users.collect_schema().names():
        return pl.col("first_name").cast(pl.String)
    return pl.lit(None, pl.String)
