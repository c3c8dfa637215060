"""The shipped cart_recovery draft, run on hand-made carts: keyed entry, wait-for, split, local time, goal, holdout."""

from collections import Counter
from datetime import timedelta

import polars as pl

from engine.definitions import load_definitions
from engine.journeys import runs_live
from engine.render import TemplateStore
from engine.settings import REPO_ROOT
from tests.journey_harness import T0, Runner

H = timedelta(hours=1)
D = timedelta(days=1)
USERS = [f"u{i:03d}" for i in range(400)]


def cart_recovery():
    return load_definitions(REPO_ROOT / "definitions", TemplateStore(REPO_ROOT / "templates")).journeys["cart_recovery"]


def test_cart_recovery_is_a_draft_that_live_runs_leave_alone():
    assert not runs_live(cart_recovery())


def test_cart_recovery_recovers_carts_one_instance_per_cart():
    users = pl.LazyFrame({"user_id": USERS, "timezone": ["Asia/Tokyo"] * len(USERS)})
    runner = Runner(cart_recovery(), users=users)
    events: list[tuple] = []
    for number, user in enumerate(USERS):
        events.append((user, "add_to_cart", T0 - H, {"cart_id": f"{user}-1"}))
        if number % 4 == 0:  # buys this very cart: the goal
            events.append((user, "purchase", T0 + 3 * H, {"cart_id": f"{user}-1"}))
        elif number % 4 == 1:  # buys another cart: not this cart's goal; comes back to the app
            events.append((user, "purchase", T0 + 3 * H, {"cart_id": "other"}))
            events.append((user, "app_open", T0 + 2 * H, {}))
    runner.run(T0, events=events)
    assert runner.state.height == len(USERS) and set(runner.state.get_column("entry_key")) == {
        f"{user}-1" for user in USERS
    }
    runner.run(T0 + D, events=events)
    for day in (2, 3, 4):
        runner.run(T0 + day * D, events=events)

    final = runner.state.select("user_id", "exit_reason", "holdout", "arm", "goal_at")
    by_user = {row["user_id"]: row for row in final.iter_rows(named=True)}
    held = {user for user, row in by_user.items() if row["holdout"]}
    assert 20 <= len(held) <= 65, "about a tenth of carts are the baseline"
    sent = Counter((user, channel) for user, channel, *_ in runner.sends)
    assert not {user for user, _ in sent} & held
    for number, user in enumerate(USERS):
        row = by_user[user]
        if number % 4 == 0:
            assert (row["exit_reason"], row["goal_at"]) == ("goal", T0 + 3 * H)
            assert not sent[(user, "email")] and not sent[(user, "push")]
            continue
        assert row["exit_reason"] == "completed", row
        if user in held:
            continue
        if number % 4 == 1:
            assert sent[(user, "push")] == 1 and not sent[(user, "email")], "back in the app: a push"
        else:
            assert sent[(user, "email")] == 1 and row["arm"] in ("email_now", "email_at_nine")
    emailed = {user: at for user, channel, _, at in runner.sends if channel == "email"}
    for user, at in emailed.items():  # timed out at T0 + 1d (15:00 in Tokyo): now, or at the run after 09:00 JST
        assert at == (T0 + D if by_user[user]["arm"] == "email_now" else T0 + 2 * D), (user, at)
    assert Counter(by_user[user]["arm"] for user in emailed).keys() == {"email_now", "email_at_nine"}
    waited = runner.transitions.filter(pl.col("from_node") == "nine_local")
    assert set(waited.get_column("at")) == {T0 + 2 * D}
    assert set(waited.get_column("reason")) == {"waited until 09:00 local time"}
