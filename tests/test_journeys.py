"""The journey engine on a hand-made population: paths, waits, branches, sends, re-entry, reruns."""

from datetime import UTC, datetime, timedelta

import polars as pl
import yaml

from engine.behaviour import Behaviour
from engine.journeys import INSTANCE_SCHEMA, KNOWN_SCHEMA, run_journey
from models.journeys import JourneyDefinition
from tests.behaviours import behaviour_from_rows

T0 = datetime(2026, 9, 10, 6, tzinfo=UTC)
JOURNEY = JourneyDefinition.model_validate(
    yaml.safe_load(
        """
name: abandoned_cart
entry: {segment: cart_abandoners}
start: wait_a_day
nodes:
  wait_a_day: {delay: 1d, next: bought_yet}
  bought_yet:
    branch:
      - when: {performed: {event: purchase, within: {since: entry}}}
        next: converted
    otherwise: email_reminder
  email_reminder: {send: {channel: email, template: cart_reminder}, next: wait_two_days}
  wait_two_days: {delay: 2d, next: bought_after_email}
  bought_after_email:
    branch:
      - when: {performed: {event: purchase, within: {since: entry}}}
        next: converted
    otherwise: push_reminder
  push_reminder: {send: {channel: push, template: cart_push}, next: finished}
  converted: {exit: converted}
  finished: {exit: completed}
"""
    )
)
USERS = pl.LazyFrame({"user_id": ["a", "b", "c"]})


def behaviour_at(as_of: datetime, purchases: dict[str, datetime]) -> Behaviour:
    return behaviour_from_rows([(user, "purchase", ts, 1.0) for user, ts in purchases.items()], as_of)


class Simulation:
    """Runs the journey day by day, keeping state the way the database would."""

    def __init__(self) -> None:
        self.state = pl.DataFrame(schema=INSTANCE_SCHEMA)
        self.sends: list[tuple[str, str, datetime]] = []

    def run(self, as_of: datetime, entered: list[str], purchases: dict[str, datetime]):
        known = self.state.select(KNOWN_SCHEMA.names())
        new, result = run_journey(
            JOURNEY,
            "v1",
            entered=pl.Series(entered, dtype=pl.String),
            known=known,
            active=self.state.filter(pl.col("status") == "active"),
            users=USERS,
            behaviour=behaviour_at(as_of, purchases),
            memberships={},
        )
        self.state = pl.concat(
            [self.state.join(result.instances.select("instance_id"), on="instance_id", how="anti"), result.instances]
        )
        self.sends += [(u, c, as_of) for u, c in result.sends.select("user_id", "channel").iter_rows()]
        return new, result

    def where(self, user: str) -> tuple[str, str]:
        row = self.state.filter(pl.col("user_id") == user).sort("entered_at").row(-1, named=True)
        return row["node"], row["status"]


def test_a_buyer_converts_and_a_non_buyer_gets_email_then_push():
    sim = Simulation()
    purchases = {"a": T0 + timedelta(hours=30)}  # a buys between the first and second run after entry
    sim.run(T0, ["a", "b"], purchases)
    assert sim.where("a") == ("wait_a_day", "active")
    sim.run(T0 + timedelta(days=1), [], purchases)
    assert sim.where("a") == ("wait_two_days", "active"), "no purchase yet at the first check: emailed"
    sim.run(T0 + timedelta(days=2), [], purchases)
    sim.run(T0 + timedelta(days=3), [], purchases)
    assert sim.where("a") == ("converted", "exited")
    assert sim.where("b") == ("finished", "exited")
    assert sorted((u, c) for u, c, _ in sim.sends) == [("a", "email"), ("b", "email"), ("b", "push")]
    assert [at for u, c, at in sim.sends if (u, c) == ("b", "push")] == [T0 + timedelta(days=3)]


def test_purchase_before_the_first_check_skips_every_message():
    sim = Simulation()
    purchases = {"c": T0 + timedelta(hours=2)}
    sim.run(T0, ["c"], purchases)
    sim.run(T0 + timedelta(days=1), [], purchases)
    assert sim.where("c") == ("converted", "exited")
    assert sim.sends == []


def test_a_missed_run_catches_up_through_every_elapsed_wait():
    sim = Simulation()
    sim.run(T0, ["b"], {})
    _, result = sim.run(T0 + timedelta(days=5), [], {})  # four runs missed: both waits have elapsed
    assert result.transitions.get_column("to_node").to_list() == [
        "bought_yet", "email_reminder", "wait_two_days",
    ]  # fmt: skip
    _, result = sim.run(T0 + timedelta(days=7), [], {})
    assert sim.where("b") == ("finished", "exited")


def test_rerunning_the_same_as_of_moves_nobody():
    sim = Simulation()
    sim.run(T0, ["a", "b"], {})
    sim.run(T0 + timedelta(days=1), [], {})
    before = sim.state.sort("instance_id")
    new, result = sim.run(T0 + timedelta(days=1), [], {})
    assert new.is_empty() and result.transitions.is_empty() and result.sends.is_empty()
    assert sim.state.sort("instance_id").equals(before)


def test_reentry_policy():
    sim = Simulation()
    sim.run(T0, ["c"], {"c": T0 + timedelta(hours=1)})
    sim.run(T0 + timedelta(days=1), [], {"c": T0 + timedelta(hours=1)})
    assert sim.where("c") == ("converted", "exited")
    new, _ = sim.run(T0 + timedelta(days=2), ["c"], {})
    assert new.height == 1, "after_exit lets a user who left come back"
    new, _ = sim.run(T0 + timedelta(days=2, hours=1), ["c"], {})
    assert new.is_empty(), "an active instance blocks a second entry"


def test_instance_ids_and_send_keys_are_deterministic():
    runs = []
    for _ in range(2):
        sim = Simulation()
        sim.run(T0, ["a", "b"], {})
        _, result = sim.run(T0 + timedelta(days=1), [], {})
        runs.append(
            (sim.state.get_column("instance_id").sort().to_list(), result.sends.get_column("send_key").to_list())
        )
    assert runs[0] == runs[1]
    assert len(set(runs[0][1])) == 2
