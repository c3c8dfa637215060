"""What the dispatch benchmark sends: users with carts, and one planned email and one planned push per user.

Deterministic for a seed. Names and items include characters HTML must escape (`&`, `<`, `'`), so autoescaping
does real work, and some users have no first name, so both branches of the greeting render. Prices come from a
catalog, as in a shop: the same amounts recur across messages.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from engine.behaviour import Behaviour
from engine.rollups import ROLLUP_SCHEMA

AS_OF = datetime(2026, 10, 1, 6, tzinfo=UTC)
EMAIL_TEMPLATE = "cart_reminder"
PUSH_TEMPLATE = "cart_push"
CHANNEL_TEMPLATES = {"email": EMAIL_TEMPLATE, "push": PUSH_TEMPLATE}
_FIRST_NAMES = ["Ada", "Grace", "Zoë", "O'Brien", "Tom & Jerry", "", "Linus", "Émile", "<b>Max</b>", "Noor"]
_ITEMS = [
    "Trail running shoes", "Wool socks (3 pack)", "Rain jacket", "Salt & vinegar crisps", "Espresso beans 1kg",
    "Cast-iron pan <28 cm>", "Yoga mat", "LED head torch", "Kids' backpack", "Oat milk x6", "Chef's knife",
    "Water bottle 750ml",
]  # fmt: skip


@dataclass(frozen=True)
class DispatchWorkload:
    """`messages` users, each with a cart, one planned email and one planned push."""

    messages: int
    seed: int
    users: pl.LazyFrame
    behaviour: Behaviour

    def outbox_rows(self, channel: str) -> list[dict[str, Any]]:
        """One planned outbox row per user for `channel` ("email" or "push"), keys in user order."""
        return [
            {
                "send_key": f"bench-{channel}-{i:08d}",
                "run_id": "bench-planner",
                "as_of": AS_OF,
                "journey": "abandoned_cart",
                "journey_version": "bench",
                "node": f"{channel}_reminder",
                "instance_id": f"i{i}",
                "user_id": _user(i),
                "channel": channel,
                "template": CHANNEL_TEMPLATES[channel],
                "recipient": f"{_user(i)}@example.com" if channel == "email" else f"fcm-token-{i:08d}",
                "status": "planned",
            }
            for i in range(self.messages)
        ]

    def claimed_rows(self, channel: str) -> pl.DataFrame:
        """The rows dispatch would claim for `channel`, in the same shape, for rendering without dispatch."""
        rows = self.outbox_rows(channel)
        return pl.DataFrame(
            {
                "send_key": [r["send_key"] for r in rows],
                "user_id": [r["user_id"] for r in rows],
                "journey": [r["journey"] for r in rows],
                "template": [r["template"] for r in rows],
                "recipient": [r["recipient"] for r in rows],
                "attempts": [1] * len(rows),
            }
        )


def build_workload(messages: int, seed: int) -> DispatchWorkload:
    """Users u00000000.. with a first name and one cart of 1 to 3 items added on the day before as_of."""
    rng = random.Random(seed)
    prices = {item: round(rng.uniform(2, 180), 2) for item in _ITEMS}
    users, names, event_users, stamps, properties = [], [], [], [], []
    day_before = AS_OF - timedelta(days=1)
    for i in range(messages):
        user = _user(i)
        users.append(user)
        names.append(rng.choice(_FIRST_NAMES))
        for position in range(rng.randint(1, 3)):
            item = rng.choice(_ITEMS)
            event_users.append(user)
            stamps.append(day_before + timedelta(seconds=rng.randrange(86_400 - 60) + position))
            properties.append(json.dumps({"cart_id": f"c{i}", "item_name": item, "price": prices[item]}))
    events = pl.DataFrame(
        {
            "user_id": event_users,
            "event": ["add_to_cart"] * len(event_users),
            "ts": stamps,
            "value": [None] * len(event_users),
            "properties": properties,
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC"), "value": pl.Float64},
    )
    behaviour = Behaviour(AS_OF, events.lazy(), pl.LazyFrame(schema=ROLLUP_SCHEMA))
    return DispatchWorkload(messages, seed, pl.LazyFrame({"user_id": users, "first_name": names}), behaviour)


def _user(i: int) -> str:
    return f"u{i:08d}"
