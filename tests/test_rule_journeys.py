"""Journey branches on engagement and value statistics since each instance's own entry."""

from datetime import UTC, datetime, timedelta

import polars as pl
import yaml

from engine.behaviour import DELIVERY_SCHEMA, Behaviour
from engine.journeys import INSTANCE_SCHEMA, advance
from engine.rollups import rollup_events
from models.journeys import JourneyDefinition

AS_OF = datetime(2026, 9, 10, 6, tzinfo=UTC)
JOURNEY = JourneyDefinition.model_validate(
    yaml.safe_load(
        """
name: follow_up
entry: {segment: anyone}
start: check
nodes:
  check:
    branch:
      - when: {clicked: {template: cart_reminder, within: {since: entry}}}
        next: clicked
      - when: {aggregate: {event: purchase, fn: sum, within: {since: entry}, gte: 10}}
        next: spent
    otherwise: nothing
  clicked: {exit: clicked}
  spent: {exit: spent}
  nothing: {exit: nothing}
"""
    )
)


def instance(instance_id: str, user: str, entered: datetime) -> dict:
    return {
        "instance_id": instance_id,
        "journey": "follow_up",
        "version": "v1",
        "user_id": user,
        "entry_key": None,
        "entered_at": entered,
        "node": "check",
        "node_entered_at": entered,
        "due_at": None,
        "status": "active",
        "exit_reason": None,
        "steps": 0,
        "holdout": False,
        "arm": None,
        "goal_at": None,
    }


def hours(n: int) -> datetime:
    """n hours before the run."""
    return AS_OF - timedelta(hours=n)


def test_each_instance_reads_engagement_and_spend_since_its_own_entry():
    active = pl.DataFrame(
        [
            instance("a", "ann", hours(48)),  # clicked after entering
            instance("b", "bob", hours(24)),  # clicked before entering, then spent 12
            instance("c", "cyd", hours(48)),  # clicked a push of another template
            instance("d1", "dee", hours(72)),  # dee entered twice: the click falls in the first window only
            instance("d2", "dee", hours(12)),
        ],
        schema=INSTANCE_SCHEMA,
    )
    deliveries = pl.LazyFrame(
        [
            ("ann", "abandoned_cart", "cart_reminder", "email", "clicked", hours(30)),
            ("bob", "abandoned_cart", "cart_reminder", "email", "clicked", hours(30)),
            ("cyd", "abandoned_cart", "cart_push", "push", "clicked", hours(30)),
            ("dee", "abandoned_cart", "cart_reminder", "email", "clicked", hours(30)),
            ("ann", "abandoned_cart", "cart_reminder", "email", "clicked", hours(-1)),  # after as_of: unseen
        ],
        schema=DELIVERY_SCHEMA,
        orient="row",
    )
    events = pl.LazyFrame(
        [("bob", "purchase", hours(20), 5.0), ("bob", "purchase", hours(2), 7.0), ("cyd", "purchase", hours(50), 99.0)],
        schema={"user_id": pl.String, "event": pl.String, "ts": pl.Datetime("us", "UTC"), "value": pl.Float64},
        orient="row",
    ).with_columns(pl.col("ts").dt.date().alias("load_date"), pl.lit(None, pl.String).alias("properties"))
    behaviour = Behaviour(
        AS_OF, events, rollup_events(events).filter(pl.col("day") < AS_OF.date()), deliveries=deliveries
    )
    users = pl.LazyFrame({"user_id": ["ann", "bob", "cyd", "dee"]})

    result = advance(JOURNEY, active, users=users, behaviour=behaviour, memberships={})

    exits = dict(result.instances.select("instance_id", "exit_reason").iter_rows())
    assert exits == {"a": "clicked", "b": "spent", "c": "nothing", "d1": "clicked", "d2": "nothing"}
