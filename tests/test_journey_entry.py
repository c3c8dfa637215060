"""Journey entry: event occurrences (keyed or not), scheduled broadcasts, re-entry policies, holdout, dates."""

from datetime import timedelta

import polars as pl
import pytest

from engine.keys import text_key
from tests.journey_harness import T0, Runner, journey

H = timedelta(hours=1)
D = timedelta(days=1)

KEYED = """
name: carts
entry: {event: add_to_cart, key: cart_id, where: {source: web}, reentry: %s}
start: wait
nodes:
  wait: {delay: 12h, next: done}
  done: {exit: completed}
"""


def carts(reentry: str = "after_exit") -> Runner:
    return Runner(journey(KEYED % reentry))


def cart(user: str, cart_id: str | None, at, source: str = "web") -> tuple:
    properties = {"source": source} | ({"cart_id": cart_id} if cart_id is not None else {})
    return (user, "add_to_cart", at, properties)


def test_a_keyed_event_entry_makes_one_instance_per_key_with_the_key_in_its_id():
    runner = carts()
    events = [cart("a", "c1", T0 - 5 * H), cart("a", "c1", T0 - 4 * H), cart("a", "c2", T0 - 3 * H)]
    new, result = runner.run(T0, events=events)
    assert sorted(new.get_column("entry_key").to_list()) == ["c1", "c2"]
    ids = dict(new.select("entry_key", "instance_id").iter_rows())
    assert ids["c1"] == text_key("carts", "a", T0.isoformat(), "c1")
    reasons = sorted(result.transitions.get_column("reason").to_list())
    assert reasons[0] == "performed add_to_cart at 2026-09-10 01:00:00 UTC (cart_id c1)", "the first event of c1"


def test_events_outside_the_lookback_without_the_key_or_failing_the_filter_enter_nobody():
    runner = carts()
    events = [
        cart("a", "c1", T0 - D - H),  # before the lookback
        cart("b", None, T0 - H),  # no cart_id
        cart("c", "c3", T0 - H, source="app"),  # filtered out by where
        cart("c", "c4", T0),  # at as_of: not visible yet
    ]
    new, _ = runner.run(T0, events=events)
    assert new.is_empty()


def test_events_during_an_instance_are_spent_and_a_new_event_after_exit_re_enters():
    runner = carts()
    runner.run(T0, events=[cart("a", "c1", T0 - H)])
    during = cart("a", "c1", T0 + 2 * H)  # while the instance waits
    new, _ = runner.run(T0 + D, events=[during])
    assert new.is_empty() and runner.where("a") == ("done", "exited")
    new, _ = runner.run(T0 + D + H, events=[during])
    assert new.is_empty(), "an event from before the instance left does not start another one"
    new, _ = runner.run(T0 + 2 * D, events=[during, cart("a", "c1", T0 + D + 3 * H)])
    assert new.height == 1, "after_exit: a later add of the same cart enters again"


def test_a_lookback_longer_than_the_run_interval_enters_nobody_twice():
    runner = Runner(journey((KEYED % "after_exit").replace("where: {source: web},", "lookback: 3d,")))
    events = [cart("a", "c1", T0 - H)]
    for day in range(4):
        runner.run(T0 + day * D, events=events)
    assert runner.state.height == 1


@pytest.mark.parametrize(
    ("reentry", "entries"),
    [
        ("never", 1),
        ("after_exit", 4),
        ("{every: 2d}", 2),  # days 0 and 2 (day 1 is a day after the last entry, day 3 likewise)
        ("{times: 3}", 3),
        ("{every: 2d, times: 1}", 1),
    ],
)
def test_reentry_policies_count_entries_per_subject(reentry: str, entries: int):
    runner = carts(reentry)
    events = []
    for day in range(4):  # the cart is added again every day; each instance waits 12h then exits
        events.append(cart("a", "c1", T0 + day * D - H))
        runner.run(T0 + day * D, events=events)
        runner.run(T0 + day * D + D - H, events=events)  # a run before the next add: the instance exits
    assert runner.state.filter(pl.col("entry_key") == "c1").height == entries


def test_an_active_instance_blocks_a_second_entry_whatever_the_policy():
    runner = carts("{every: 1m}")
    runner.run(T0, events=[cart("a", "c1", T0 - H)])
    new, _ = runner.run(T0 + H, events=[cart("a", "c1", T0 + H / 2)])
    assert new.is_empty()


BROADCAST = """
name: launch
entry: {broadcast: loyalists, at: 2026-09-11T09:00:00Z}
start: wait
nodes:
  wait: {delay: 7d, next: done}
  done: {exit: completed}
"""


def test_a_broadcast_enters_the_segment_once_at_the_first_run_at_or_after_its_time():
    runner = Runner(journey(BROADCAST))
    new, _ = runner.run(T0 + D, memberships={"loyalists": ["a", "b"]})  # 06:00, before 09:00
    assert new.is_empty()
    new, result = runner.run(T0 + 2 * D, memberships={"loyalists": ["a", "b"]})
    assert sorted(new.get_column("user_id").to_list()) == ["a", "b"]
    assert result.transitions.get_column("reason").to_list()[0] == (
        "broadcast to segment loyalists scheduled at 2026-09-11 09:00:00 UTC"
    )
    new, _ = runner.run(T0 + 3 * D, memberships={"loyalists": ["a", "b", "c"]})
    assert new.is_empty(), "a user joining the segment later missed the broadcast"


def test_a_broadcast_to_an_empty_segment_stays_pending():
    runner = Runner(journey(BROADCAST))
    assert runner.run(T0 + 2 * D, memberships={"loyalists": []})[0].is_empty()
    assert runner.run(T0 + 3 * D, memberships={"loyalists": ["c"]})[0].height == 1


HOLDOUT = """
name: promo
entry: {segment: everyone}
holdout: 20
start: mail
nodes:
  mail: {send: {channel: email, template: cart_reminder}, next: done}
  done: {exit: completed}
"""


def test_held_out_users_enter_flagged_walk_the_journey_and_are_sent_nothing():
    users = [f"u{i}" for i in range(2000)]
    runner = Runner(journey(HOLDOUT), users=pl.LazyFrame({"user_id": users}))
    new, result = runner.run(T0, entered=users)
    held = set(new.filter(pl.col("holdout")).get_column("user_id"))
    assert 300 <= len(held) <= 500, "about 20%"
    assert set(result.sends.get_column("user_id")) == set(users) - held
    assert result.instances.filter(pl.col("status") == "exited").height == 2000, "held-out users finish too"
    held_user = sorted(held)[0]
    assert runner.reasons(held_user) == ["entered segment everyone (holdout)", "holdout: no email cart_reminder"]
    again = Runner(journey(HOLDOUT), users=pl.LazyFrame({"user_id": users}))
    assert set(again.run(T0 + D, entered=users)[0].filter(pl.col("holdout")).get_column("user_id")) == held, (
        "the holdout is a stable function of journey and user"
    )


def test_entries_only_between_starts_at_and_ends_at_while_in_flight_instances_finish():
    dated = journey(
        """
name: dated
entry: {segment: s}
starts_at: 2026-09-11T00:00:00Z
ends_at: 2026-09-12T00:00:00Z
start: wait
nodes:
  wait: {delay: 2d, next: done}
  done: {exit: completed}
"""
    )
    runner = Runner(dated)
    assert runner.run(T0, entered=["a"])[0].is_empty(), "before starts_at"
    assert runner.run(T0 + D, entered=["b"])[0].height == 1
    assert runner.run(T0 + 2 * D, entered=["c"])[0].is_empty(), "at or after ends_at"
    runner.run(T0 + 3 * D)
    assert runner.where("b") == ("done", "exited")


def test_rerunning_an_as_of_creates_no_second_instance_for_any_entry_kind():
    runner = carts()
    events = [cart("a", "c1", T0 - H), cart("b", "c2", T0 - H)]
    runner.run(T0, events=events)
    new, result = runner.run(T0, events=events)
    assert new.is_empty() and result.transitions.is_empty()
    broadcast = Runner(journey(BROADCAST))
    broadcast.run(T0 + 2 * D, memberships={"loyalists": ["a"]})
    assert broadcast.run(T0 + 2 * D, memberships={"loyalists": ["a"]})[1].transitions.is_empty()
