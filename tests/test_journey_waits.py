"""Wait-for (an event or a segment, with a timeout and two exits), the goal, and exit criteria."""

from datetime import timedelta

import polars as pl

from tests.journey_harness import T0, Runner, journey

H = timedelta(hours=1)
D = timedelta(days=1)

WAIT_EVENT = """
name: waits
entry: {event: add_to_cart, key: cart_id}
start: wait
nodes:
  wait:
    wait_for: {event: purchase, where: {channel: app}, match_key: %s}
    timeout: 2d
    matched: bought
    timed_out: lost
  bought: {exit: bought}
  lost: {exit: lost}
"""


def added(user: str, cart: str, at) -> tuple:
    return (user, "add_to_cart", at, {"cart_id": cart})


def bought(user: str, cart: str, at, channel: str = "app") -> tuple:
    return (user, "purchase", at, {"cart_id": cart, "channel": channel})


def test_an_event_strictly_after_arrival_and_before_the_deadline_takes_the_matched_exit():
    runner = Runner(journey(WAIT_EVENT % "false"))
    events = [added("a", "c1", T0 - H), bought("a", "c0", T0 - H / 2), bought("a", "c0", T0)]  # not after arrival
    runner.run(T0, events=events)
    runner.run(T0 + D, events=events)
    assert runner.where("a") == ("wait", "active")
    events.append(bought("a", "c9", T0 + D + H))
    runner.run(T0 + 2 * D, events=events)  # also the deadline run: the purchase came before it
    assert runner.where("a") == ("bought", "exited")
    assert runner.reasons("a")[-1] == "matched: purchase (channel=app) at 2026-09-11 07:00:00 UTC"


def test_no_event_in_time_takes_the_timed_out_exit_even_when_the_run_comes_late():
    runner = Runner(journey(WAIT_EVENT % "false"))
    events = [added("a", "c1", T0 - H), added("b", "c2", T0 - H)]
    runner.run(T0, events=events)
    events += [bought("a", "c1", T0 + 2 * D + H), bought("b", "c2", T0 + H, channel="web")]  # too late; filtered
    runner.run(T0 + 3 * D, events=events)
    assert runner.where("a") == ("lost", "exited")
    assert runner.where("b") == ("lost", "exited")
    assert runner.reasons("a")[-1] == "timed out after 2d"


def test_match_key_only_counts_the_event_of_the_instances_own_key():
    runner = Runner(journey(WAIT_EVENT % "true"))
    events = [added("a", "c1", T0 - H), added("a", "c2", T0 - H)]
    runner.run(T0, events=events)
    events.append(bought("a", "c2", T0 + H))
    runner.run(T0 + D, events=events)
    outcome = dict(runner.state.select("entry_key", "node").iter_rows())
    assert outcome == {"c1": "wait", "c2": "bought"}
    assert runner.reasons("a")[-1] == "matched: purchase (channel=app, same cart_id) at 2026-09-10 07:00:00 UTC"


WAIT_SEGMENT = """
name: segment_wait
entry: {segment: s}
start: wait
nodes:
  wait: {wait_for: {segment: loyalists}, timeout: 1d, matched: joined, timed_out: lost}
  joined: {exit: joined}
  lost: {exit: lost}
"""


def test_a_segment_wait_matches_at_a_later_run_up_to_the_deadline_run():
    runner = Runner(journey(WAIT_SEGMENT))
    runner.run(T0, entered=["a", "b", "c"], memberships={"loyalists": ["a", "b"]})
    assert {runner.where(user) for user in "abc"} == {("wait", "active")}, "not at the arrival run"
    runner.run(T0 + 12 * H, memberships={"loyalists": ["a"]})
    runner.run(T0 + D, memberships={"loyalists": ["a", "b"]})  # the deadline run still counts
    assert runner.where("a") == ("joined", "exited")
    assert runner.where("b") == ("joined", "exited")
    assert runner.where("c") == ("lost", "exited")
    assert runner.reasons("a")[-1] == "matched: in segment loyalists"
    late = Runner(journey(WAIT_SEGMENT))
    late.run(T0, entered=["a"])
    late.run(T0 + D + H, memberships={"loyalists": ["a"]})
    assert late.where("a") == ("lost", "exited"), "in the segment only after the deadline"


def test_a_wait_for_takes_time_so_a_loop_through_it_is_allowed_and_moves_once_per_run():
    looping = journey(
        """
name: reminders
entry: {segment: s}
start: wait
nodes:
  wait: {wait_for: {event: purchase}, timeout: 1d, matched: done, timed_out: remind}
  remind: {send: {channel: push, template: cart_push}, next: wait}
  done: {exit: bought}
"""
    )
    runner = Runner(looping)
    runner.run(T0, entered=["a"])
    for day in range(1, 4):
        runner.run(T0 + day * D)
    assert len(runner.sends) == 3 and runner.where("a") == ("wait", "active")


GOAL = """
name: goal
entry: {segment: s}
goal: {event: purchase, within: 3d}
start: first
nodes:
  first: {delay: 1d, next: mail}
  mail: {send: {channel: email, template: cart_reminder}, next: second}
  second: {delay: 5d, next: done}
  done: {exit: completed}
"""


def test_the_goal_exits_from_any_node_within_the_attribution_window_and_records_the_conversion():
    runner = Runner(journey(GOAL))
    runner.run(T0, entered=["a", "b", "c"])
    events = [
        ("a", "purchase", T0 + 2 * H),  # during the first delay
        ("b", "purchase", T0 + D + 2 * H),  # during the second
        ("c", "purchase", T0 + 3 * D + H),  # after the window
        ("c", "purchase", T0 - H),  # before entry
    ]
    runner.run(T0 + 12 * H, events=events)
    assert runner.where("a") == ("(exit)", "exited")
    assert runner.latest("a")["exit_reason"] == "goal" and runner.latest("a")["goal_at"] == T0 + 2 * H
    assert runner.reasons("a")[-1] == "goal: purchase at 2026-09-10 08:00:00 UTC"
    runner.run(T0 + D, events=events)  # b and c are emailed
    runner.run(T0 + 4 * D, events=events)
    assert runner.latest("b")["exit_reason"] == "goal"
    assert runner.where("c") == ("second", "active") and runner.latest("c")["goal_at"] is None
    assert [user for user, *_ in runner.sends] == ["b", "c"]


EXITS = """
name: criteria
entry: {segment: s}
exit_when:
  - {when: {segment: unsubscribed}, reason: unsubscribed}
  - {when: {performed: {event: support_ticket, within: {since: entry}}}, reason: complained}
start: wait
nodes:
  wait: {delay: 2d, next: done}
  done: {exit: completed}
"""


def test_exit_criteria_are_checked_every_run_in_order_and_on_entry():
    runner = Runner(journey(EXITS))
    runner.run(T0, entered=["a", "b", "c"], memberships={"unsubscribed": ["c"]})
    assert runner.latest("c")["exit_reason"] == "unsubscribed", "already true when entering"
    events = [("a", "support_ticket", T0 + H), ("b", "support_ticket", T0 - H)]  # b's is from before entry
    runner.run(T0 + D, events=events, memberships={"unsubscribed": ["a"]})
    assert runner.latest("a")["exit_reason"] == "unsubscribed", "the first criterion listed wins"
    assert runner.reasons("a")[-1] == 'exit criteria unsubscribed: {"segment":"unsubscribed"}'
    assert runner.where("b") == ("wait", "active")
    runner.run(T0 + 2 * D, events=events, memberships={"unsubscribed": []})
    assert runner.latest("b")["exit_reason"] == "completed"


def test_rerunning_an_as_of_repeats_no_wait_goal_or_exit():
    runner = Runner(journey(GOAL))
    runner.run(T0, entered=["a", "b"])
    events = [("a", "purchase", T0 + H)]
    runner.run(T0 + D, events=events)
    before = runner.state.sort("instance_id")
    new, result = runner.run(T0 + D, events=events)
    assert new.is_empty() and result.transitions.is_empty() and result.sends.is_empty()
    assert runner.state.sort("instance_id").equals(before)
    assert runner.state.filter(pl.col("exit_reason") == "goal").height == 1
