"""Operator views over persisted journey state: where users are, arrivals per day, one user's path."""

from datetime import timedelta
from pathlib import Path

import polars as pl

from engine.db import connect
from engine.journey_store import load_active, load_known, save_step
from engine.journey_views import arrivals_per_day, user_path, where_users_are
from engine.journeys import run_journey
from tests.test_journeys import JOURNEY, T0, USERS, behaviour_at


def test_views_follow_what_the_runs_wrote(tmp_path: Path):
    database = connect(f"sqlite:///{tmp_path / 'state.db'}")
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
