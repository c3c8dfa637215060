"""Operator views over persisted journey state: where users are, arrivals per day, one user's path."""

from datetime import timedelta

import polars as pl

from engine.db import connect
from engine.journey_store import load_active, load_known, save_step
from engine.journey_views import arrivals_per_day, conversions, user_path, where_users_are
from engine.journeys import KNOWN_SCHEMA, run_journey
from tests.journey_harness import Runner, behaviour, journey
from tests.test_journeys import JOURNEY, T0, USERS, behaviour_at


def test_views_follow_what_the_runs_wrote(database_url: str):
    database = connect(database_url)
    purchases = {"a": T0 + timedelta(hours=30)}
    for day, entered in ((0, ["a", "b"]), (1, []), (3, [])):
        as_of = T0 + timedelta(days=day)
        with database.begin() as conn:
            _, result = run_journey(
                JOURNEY,
                "v1",
                entered=pl.Series(entered, dtype=pl.String),
                known=load_known(conn, JOURNEY.name),
                active=load_active(conn, JOURNEY.name),
                users=USERS,
                behaviour=behaviour_at(as_of, purchases),
                memberships={},
            )
            save_step(conn, result=result, outbox=pl.DataFrame(), run_id=f"run-{day}")

    with database.connect() as conn:
        where = where_users_are(conn, JOURNEY.name)
        arrivals = arrivals_per_day(conn, JOURNEY.name)
        path = user_path(conn, "a")

    assert sorted(where.select("node", "status", "exit_reason", "instances").rows()) == [
        ("converted", "exited", "converted", 1),
        ("finished", "exited", "completed", 1),
    ]
    first_day = arrivals.filter(pl.col("day") == T0.date())
    assert first_day.select("node", "arrivals").rows() == [("wait_a_day", 2)]
    assert path.get_column("to_node").to_list() == [
        "wait_a_day", "bought_yet", "email_reminder", "wait_two_days", "bought_after_email", "converted",
    ]  # fmt: skip
    assert path.get_column("run_id").to_list() == ["run-0", "run-1", "run-1", "run-1", "run-3", "run-3"]
    assert path.get_column("reason").to_list()[-1].startswith('case 1 held: {"performed":{"event":"purchase"')


EXPERIMENT = journey(
    """
name: experiment
entry: {event: add_to_cart, key: cart_id}
goal: {event: purchase, within: 3d, match_key: true}
holdout: 30
start: test
nodes:
  test: {split: [{arm: soon, weight: 1, next: short}, {arm: late, weight: 1, next: long}]}
  short: {delay: 1d, next: done}
  long: {delay: 2d, next: done}
  done: {exit: completed}
"""
)


def test_state_round_trips_through_the_database_and_conversions_compare_holdout_and_arms(database_url: str):
    database = connect(database_url)
    users = [f"u{i:02d}" for i in range(60)]
    events = [(user, "add_to_cart", T0 - timedelta(hours=1), {"cart_id": f"{user}-c"}) for user in users]
    events += [(user, "purchase", T0 + timedelta(hours=2), {"cart_id": f"{user}-c"}) for user in users[:20]]
    memory = Runner(EXPERIMENT, users=pl.LazyFrame({"user_id": users}))
    for day, as_of in enumerate((T0, T0 + timedelta(days=1))):
        with database.begin() as conn:
            known, active = load_known(conn, EXPERIMENT.name), load_active(conn, EXPERIMENT.name)
            assert known.sort("instance_id").equals(memory.state.select(KNOWN_SCHEMA.names()).sort("instance_id"))
            assert active.sort("instance_id").equals(
                memory.state.filter(pl.col("status") == "active").sort("instance_id")
            )
            seen = behaviour(events, as_of)
            _, result = run_journey(
                EXPERIMENT, "v1", known=known, active=active, users=memory.users, behaviour=seen, memberships={}
            )
            save_step(conn, result=result, outbox=pl.DataFrame(), run_id=f"run-{day}")
        memory.run(as_of, events=events)

    with database.connect() as conn:
        table = conversions(conn, EXPERIMENT.name)
        path = user_path(conn, "u00")
    expected = (
        memory.state.group_by("holdout", "arm")
        .agg(pl.len().alias("instances"), pl.col("goal_at").is_not_null().sum().alias("goals"))
        .sort("holdout", "arm")
    )
    assert table.select("holdout", "arm", "instances", "goals").rows() == expected.rows()
    assert table.get_column("goals").sum() == 20 and table.get_column("instances").sum() == 60
    assert set(path.get_column("entry_key")) == {"u00-c"}
    assert path.get_column("reason").to_list()[-1] == "goal: purchase (same cart_id) at 2026-09-10 08:00:00 UTC"
