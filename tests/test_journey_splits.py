"""Random splits: weighted, deterministic by user, journey and node, sticky across re-entries and weight edits."""

from collections import Counter
from datetime import timedelta

import polars as pl

from engine.rule_buckets import murmur3_32
from tests.journey_harness import T0, Runner, journey

D = timedelta(days=1)
USERS = [f"u{i:04d}" for i in range(4000)]

SPLIT = """
name: experiment
entry: {segment: s}
start: test
nodes:
  test:
    split:
      - {arm: email, weight: %d, next: mail}
      - {arm: push, weight: %d, next: ping}
      - {weight: %d, next: control}
  mail: {send: {channel: email, template: cart_reminder}, next: done}
  ping: {send: {channel: push, template: cart_push}, next: done}
  control: {exit: control}
  done: {exit: completed}
"""


def arms(weights: tuple[int, int, int], users: list[str] = USERS) -> dict[str, str]:
    runner = Runner(journey(SPLIT % weights), users=pl.LazyFrame({"user_id": users}))
    runner.run(T0, entered=users)
    return dict(runner.state.select("user_id", "arm").iter_rows())


def test_arms_follow_the_weights_and_are_recorded_on_the_instance_and_in_the_reason():
    runner = Runner(journey(SPLIT % (50, 30, 20)), users=pl.LazyFrame({"user_id": USERS}))
    runner.run(T0, entered=USERS)
    counts = Counter(runner.state.get_column("arm"))
    assert set(counts) == {"email", "push", "control"}
    for arm, share in (("email", 0.5), ("push", 0.3), ("control", 0.2)):
        assert abs(counts[arm] / len(USERS) - share) < 0.03, counts
    assert Counter(channel for _, channel, *_ in runner.sends) == {"email": counts["email"], "push": counts["push"]}
    user = runner.state.filter(pl.col("arm") == "push").get_column("user_id")[0]
    assert runner.reasons(user)[1] == "split test: arm push (weight 30 of 100)"


def test_the_arm_is_the_documented_hash_of_journey_node_and_user():
    expected_bucket = int(murmur3_32(pl.Series(["experiment:test:u0001"]))[0]) % 10_000
    expected = "email" if expected_bucket < 5000 else "push" if expected_bucket < 8000 else "control"
    assert arms((50, 30, 20), ["u0001"])["u0001"] == expected


def test_a_user_re_entering_takes_the_same_arm_and_so_does_every_rerun():
    runner = Runner(journey(SPLIT % (50, 30, 20)), users=pl.LazyFrame({"user_id": USERS[:200]}))
    runner.run(T0, entered=USERS[:200])
    runner.run(T0 + D, entered=USERS[:200])  # everyone exited at once: after_exit lets them back in
    per_user = runner.state.group_by("user_id").agg(pl.col("arm").n_unique().alias("arms"), pl.len().alias("n"))
    assert per_user.get_column("n").min() == 2 and per_user.get_column("arms").max() == 1
    assert arms((50, 30, 20), USERS[:200]) == dict(runner.state.select("user_id", "arm").unique().iter_rows())


def test_a_weight_change_moves_only_the_users_whose_bucket_changes_side():
    before = arms((50, 30, 20))
    after = arms((60, 20, 20))
    moved = Counter((before[user], after[user]) for user in USERS if before[user] != after[user])
    assert set(moved) == {("push", "email")}, "email keeps its users, control is untouched"
    assert abs(sum(moved.values()) / len(USERS) - 0.1) < 0.02
