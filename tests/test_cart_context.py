"""The cart context builder against a per-user reference over raw events (no Polars, no shortcuts)."""

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.behaviour import Behaviour
from engine.contexts import builder_for
from engine.rollups import ROLLUP_SCHEMA

AS_OF = datetime(2026, 10, 1, 6, tzinfo=UTC)
USERS = ["u1", "u2", "u3"]
# Ids with a quote or an accent are written escaped in JSON: a verbatim search for them finds nothing.
CART_IDS = st.sampled_from(["c1", "c2", "c1x", 'c"3', "cé4", None])
ITEMS = st.sampled_from(["Rain jacket", "Yoga mat", "c1", None])
PRICES = st.one_of(st.none(), st.sampled_from(["abc", "7.5"]), st.integers(0, 5000).map(lambda cents: cents / 100))


@st.composite
def cart_events(draw: st.DrawFn) -> list[dict[str, Any]]:
    rows = []
    for _ in range(draw(st.integers(0, 25))):
        properties: dict[str, Any] = {}
        for key, values in (("cart_id", CART_IDS), ("item_name", ITEMS), ("item_id", ITEMS), ("price", PRICES)):
            value = draw(values)
            if value is not None:
                properties[key] = value
        rows.append(
            {
                "user_id": draw(st.sampled_from(USERS)),
                "event": draw(st.sampled_from(["add_to_cart", "add_to_cart", "purchase"])),
                "ts": AS_OF - timedelta(minutes=draw(st.integers(1, 4))),  # few instants: ties are common
                "value": None,
                "properties": json.dumps(properties),  # ASCII-only: é and " come out escaped
            }
        )
    return rows


def reference(rows: list[dict[str, Any]], user: str) -> dict[str, Any]:
    """The user's last add_to_cart by (time, item name, cart id, price), nulls first, and its cart's total."""

    def fields(row: dict[str, Any]) -> tuple[Any, ...]:
        props = json.loads(row["properties"])
        item = props.get("item_name", props.get("item_id"))
        return row["ts"], item, props.get("cart_id"), price(props.get("price"))

    adds = [fields(r) for r in rows if r["user_id"] == user and r["event"] == "add_to_cart"]
    if not adds:
        return {"item_name": "your item", "item_price": 0.0, "cart_value": 0.0, "cart_id": ""}
    _, item, cart, last_price = max(adds, key=lambda f: tuple((v is not None, v) for v in f))
    total = sum(p for _, _, c, p in adds if c == cart and cart is not None and p is not None)
    return {
        "item_name": "your item" if item is None else item,
        "item_price": 0.0 if last_price is None else last_price,
        "cart_value": total if cart is not None else 0.0,
        "cart_id": cart or "",
    }


def price(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


@settings(max_examples=300, deadline=None)
@given(cart_events())
def test_cart_context_matches_a_per_user_reference(rows: list[dict[str, Any]]) -> None:
    schema = {"user_id": pl.String, "event": pl.String, "ts": pl.Datetime("us", "UTC"), "value": pl.Float64,
              "properties": pl.String}  # fmt: skip
    events = pl.DataFrame(rows, schema=schema).lazy()
    behaviour = Behaviour(AS_OF, events, pl.LazyFrame(schema=ROLLUP_SCHEMA))
    messages = pl.DataFrame({"send_key": [f"k-{u}" for u in USERS], "user_id": USERS})
    users = pl.LazyFrame({"user_id": USERS, "first_name": ["Ada", "", "Zoë"]})

    built = {row["send_key"]: row for row in builder_for("cart_push").build(messages, users, behaviour).to_dicts()}

    for user in USERS:
        got, want = built[f"k-{user}"], reference(rows, user)
        assert got["item_name"] == want["item_name"], user
        assert got["item_price"] == want["item_price"], user
        assert math.isclose(got["cart_value"], want["cart_value"], abs_tol=1e-9), user
        assert got["cart_url"] == f"https://shop.example.com/cart/{want['cart_id']}", user


def test_batches_of_one_run_read_history_once() -> None:
    """Dispatch builds a run's contexts batch by batch: the history behind them is derived once per run."""
    scans = []
    events = pl.LazyFrame(
        {"user_id": ["u1"], "event": ["add_to_cart"], "ts": [AS_OF - timedelta(hours=1)], "value": [None],
         "properties": ['{"cart_id": "c1", "price": 2.5}']},
        schema={"user_id": pl.String, "event": pl.String, "ts": pl.Datetime("us", "UTC"), "value": pl.Float64,
                "properties": pl.String},
    ).map_batches(lambda frame: scans.append(1) or frame)  # fmt: skip
    behaviour = Behaviour(AS_OF, events, pl.LazyFrame(schema=ROLLUP_SCHEMA))
    users = pl.LazyFrame({"user_id": ["u1"], "first_name": ["Ada"]})
    build = builder_for("cart_reminder").build
    for batch in range(3):
        built = build(pl.DataFrame({"send_key": [f"k{batch}"], "user_id": ["u1"]}), users, behaviour)
        assert built.get_column("cart_value").to_list() == [2.5]
    assert len(scans) == 1
