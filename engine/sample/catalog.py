"""The synthetic shop's items: an id, a category and a price each, with a few items far more popular."""

from __future__ import annotations

import polars as pl

from engine.sample.rng import lookup, pick, uniform

ITEMS = 2_000
# (category, lowest price, highest price): prices are log-uniform between them, like a real assortment.
CATEGORIES: tuple[tuple[str, float, float], ...] = (
    ("groceries", 1.0, 15.0),
    ("beauty", 4.0, 60.0),
    ("health", 3.0, 50.0),
    ("home", 5.0, 200.0),
    ("fashion", 10.0, 150.0),
    ("shoes", 25.0, 180.0),
    ("electronics", 15.0, 900.0),
    ("toys", 5.0, 80.0),
    ("books", 5.0, 40.0),
    ("sports", 10.0, 250.0),
    ("pets", 3.0, 90.0),
    ("garden", 5.0, 120.0),
)
CATEGORY_WEIGHTS = (6, 3, 2, 3, 4, 1.5, 2, 1.5, 1.5, 1.5, 1.5, 1)


def build_catalog(seed: int) -> pl.DataFrame:
    """ITEMS rows in popularity order: item 0 is the best seller (see `popular_item`)."""
    index = pl.col("_item")
    category = pick(uniform(seed, "category", index), CATEGORY_WEIGHTS)
    low = lookup([c[1] for c in CATEGORIES], category, pl.Float64())
    high = lookup([c[2] for c in CATEGORIES], category, pl.Float64())
    price = low * (high / low).pow(uniform(seed, "price", index))
    return pl.select(pl.int_range(ITEMS, dtype=pl.Int64).alias("_item")).select(
        pl.format("sku-{}", index.cast(pl.String).str.zfill(5)).alias("item_id"),
        lookup([c[0] for c in CATEGORIES], category, pl.String()).alias("category"),
        (price.floor() + 0.99).round(2).alias("price"),
    )


def popular_item(u: pl.Expr) -> pl.Expr:
    """An item index skewed to the head of the catalogue (the top 10% of items get ~46% of views)."""
    return (u.pow(3) * ITEMS).floor().cast(pl.UInt32)
