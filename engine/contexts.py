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
    carts = behaviour.shared("last_cart", lambda: _last_carts(behaviour.events))
    names = users.select("user_id", _first_name(users).alias("first_name"))
    return (
        messages.lazy()
        .select("send_key", "user_id")
        .join(carts.lazy(), on="user_id", how="left")
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


def _last_carts(events: pl.LazyFrame) -> pl.DataFrame:
    """Every user's last cart: its last item (by time, then name; cart id and price settle exact ties) and the
    sum of its items' prices.

    For everyone who ever added to a cart, not only one batch's users: computed once per run (see
    `Behaviour.shared`). Parsing JSON is the cost (~1 us a row and path), so only the rows that can matter are
    parsed: each user's rows at their last instant, then the rows whose text holds their last cart's id verbatim
    or holds an escape (an escaped id need not appear verbatim), checked exactly once parsed.
    """
    adds = events.filter(pl.col("event") == "add_to_cart").select("user_id", "ts", "properties").collect()
    last = (
        _cart_fields(adds.filter(pl.col("ts") == pl.col("ts").max().over("user_id")))
        .sort("ts", "item_name", "cart_id", "price")  # a total order: ties pick the same row in every run
        .group_by("user_id")
        .agg(pl.all().last())
        .drop("ts", "properties")
    )
    text = pl.col("properties")
    candidates = adds.join(
        last.select("user_id", pl.col("cart_id").alias("last_cart")), on="user_id", maintain_order="left"
    ).filter(text.str.contains(pl.col("last_cart"), literal=True) | text.str.contains("\\", literal=True))
    totals = (
        _cart_fields(candidates)
        .filter(pl.col("cart_id") == pl.col("last_cart"))
        .group_by("user_id", "cart_id")
        .agg(pl.col("price").sort().sum().alias("cart_value"))  # sorted: a float sum the same in every run
    )
    return last.join(totals, on=["user_id", "cart_id"], how="left").select(
        "user_id", "cart_id", "item_name", "price", "cart_value"
    )


def _cart_fields(adds: pl.DataFrame) -> pl.DataFrame:
    prop = pl.col("properties").str.json_path_match
    return adds.with_columns(
        prop("$.cart_id").alias("cart_id"),
        pl.coalesce(prop("$.item_name"), prop("$.item_id")).alias("item_name"),
        prop("$.price").cast(pl.Float64, strict=False).alias("price"),
    )


def _first_name(users: pl.LazyFrame) -> pl.Expr:
    if "first_name" in users.collect_schema().names():
        return pl.col("first_name").cast(pl.String)
    return pl.lit(None, pl.String)
