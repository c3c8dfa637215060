"""Journey experiments read back from the database: intent-to-treat assignment, attribution, known lifts."""

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from engine.db import connect, insert_new
from engine.experiments import Experiment, assignments, experiments_of, guardrails, outcomes, report_experiments
from engine.outbox import plan_outbox
from engine.stats.experiment import analyze
from models.feedback import DeliveryFact
from models.journeys import Goal
from models.tables import JourneyInstance, OutboxMessage
from tests.journey_harness import T0, Runner, journey

D = timedelta(days=1)
USERS = [f"u{i:04d}" for i in range(4000)]
EXPERIMENT = """
name: winback
goal: {event: purchase, within: 3d}
entry: {segment: s}
start: remind
nodes:
  remind:
    send:
      channel: email
      variants:
        - {variant: control, template: plain}
        - {variant: saved, template: saved}
    next: done
  done: {exit: completed}
"""
EVENT_SCHEMA = {"user_id": pl.String, "event": pl.String, "ts": pl.Datetime("us", "UTC"), "value": pl.Float64}


def recorded(tmp_path: Path, users: list[str], *, runs: int = 1) -> tuple[Runner, str]:
    """The experiment's users run through the journey and their outbox rows recorded, a third without email."""
    definition = journey(EXPERIMENT)
    runner = Runner(definition, users=pl.LazyFrame({"user_id": users}))
    url = f"sqlite:///{tmp_path / 'state.db'}"
    contacts = pl.LazyFrame(
        {
            "user_id": users,
            "email": [None if i % 3 == 0 else f"{user}@example.com" for i, user in enumerate(users)],
            "email_consent": [True] * len(users),
            "push_tokens": [[]] * len(users),
            "push_consent": [False] * len(users),
        }
    )
    for run in range(runs):
        as_of = T0 + run * D
        _, result = runner.run(as_of, entered=users)
        outbox = plan_outbox(result.sends, contacts, run_id=f"r{run}", as_of=as_of)
        with connect(url).begin() as conn:
            insert_new(conn, OutboxMessage.__table__, outbox.drop("priority").to_dicts())
    return runner, url


def events(rows: list[tuple[str, str, datetime, float | None]]) -> pl.LazyFrame:
    return pl.LazyFrame(rows, schema=EVENT_SCHEMA, orient="row").with_columns(
        pl.lit(None, pl.String).alias("properties")
    )


def test_every_assigned_user_counts_once_in_their_arm_from_the_first_assignment(tmp_path: Path):
    runner, url = recorded(tmp_path, USERS[:300], runs=2)  # everyone exits at once and re-enters the next day
    [experiment] = experiments_of(runner.definition)
    assigned = assignments(connect(url), experiment, as_of=T0 + 5 * D)
    assert assigned.height == 300 and set(assigned.get_column("assigned_at")) == {T0}
    by_user = {user: template for user, _, template, _ in runner.sends}
    assert dict(assigned.select("user_id", "arm").iter_rows()) == {
        user: {"plain": "control", "saved": "saved"}[template] for user, template in by_user.items()
    }
    with connect(url).connect() as conn:
        statuses = conn.exec_driver_sql("select distinct status from outbox").scalars().all()
    assert "skipped" in statuses, "users the controls skipped stay in the experiment"
    assert assignments(connect(url), experiment, as_of=T0 - D).is_empty()


def test_a_conversion_is_a_goal_event_after_assignment_and_within_the_window():
    goal = Goal(event="purchase", within=timedelta(days=3))
    assigned = pl.DataFrame(
        {"user_id": ["a", "b", "c", "d", "e"], "arm": ["x"] * 5, "assigned_at": [T0] * 5},
        schema={"user_id": pl.String, "arm": pl.String, "assigned_at": pl.Datetime("us", "UTC")},
    )
    rows = outcomes(
        assigned,
        events(
            [
                ("a", "purchase", T0, 5.0),  # at the assignment instant: not after it
                ("b", "purchase", T0 + 3 * D, 7.0),  # the last instant of the window
                ("b", "purchase", T0 + D, None),  # no value: converts, adds nothing
                ("c", "purchase", T0 + 3 * D + timedelta(seconds=1), 9.0),  # too late
                ("c", "purchase", T0 - D, 4.0),  # before: the CUPED covariate
                ("d", "view_item", T0 + D, 1.0),  # not the goal
            ]
        ),
        goal,
    )
    assert rows.rows() == [
        ("a", "x", False, 0.0, 0.0),
        ("b", "x", True, 7.0, 0.0),
        ("c", "x", False, 0.0, 4.0),
        ("d", "x", False, 0.0, 0.0),
        ("e", "x", False, 0.0, 0.0),
    ]


def test_a_known_lift_between_variants_is_found_and_equals_a_direct_analysis(tmp_path: Path):
    """The saved-cart variant converts at 20%, control at 10%: the report must say so, from the database."""
    runner, url = recorded(tmp_path, USERS)
    arms = {user: template for user, _, template, _ in runner.sends}
    rng = np.random.default_rng(7)
    rows, direct = [], []
    for user in USERS:
        arm = {"plain": "control", "saved": "saved"}[arms[user]]
        converted = rng.random() < (0.2 if arm == "saved" else 0.1)
        value = round(float(rng.uniform(10, 50)), 2) if converted else 0.0
        if converted:
            rows.append((user, "purchase", T0 + timedelta(hours=int(rng.integers(1, 72))), value))
        direct.append({"arm": arm, "converted": converted, "value": value, "pre_value": 0.0})
    [report] = report_experiments(connect(url), [runner.definition], events=events(rows), as_of=T0 + 10 * D)
    result = report.result
    assert [arm.arm for arm in result.arms] == ["control", "saved"] and not result.srm.flagged
    assert result == analyze(pl.DataFrame(direct), control="control", expected_weights={"control": 1, "saved": 1})
    [versus] = result.conversion
    assert versus.p_value_holm < 0.001 and versus.bayes.chance_to_beat_control > 0.99
    markdown = report.markdown()
    assert "### Experiment winback / remind" in markdown and "| saved | " in markdown
    assert "Sample ratio mismatch" not in markdown


def test_a_skewed_assignment_leads_the_report_with_a_sample_ratio_mismatch(tmp_path: Path):
    runner, url = recorded(tmp_path, USERS[:2000])
    with connect(url).begin() as conn:  # lose most of one arm's rows, as a buggy sender might
        conn.exec_driver_sql("delete from outbox where variant = 'saved' and user_id > 'u0400'")
    [report] = report_experiments(connect(url), [runner.definition], events=events([]), as_of=T0 + D)
    assert report.result.srm.flagged
    assert report.markdown().splitlines()[2].startswith("**Sample ratio mismatch**")


@pytest.mark.parametrize("goal", [None, "purchase"])
def test_only_journeys_with_a_goal_and_variants_or_splits_have_experiments(goal: str | None):
    text = EXPERIMENT if goal else EXPERIMENT.replace("goal: {event: purchase, within: 3d}\n", "")
    found = experiments_of(journey(text))
    assert found == (
        [Experiment("winback", "remind", "send", {"control": 1, "saved": 1}, journey(text).goal)] if goal else []
    )
    plain = journey(
        text.replace(
            "variants:\n        - {variant: control, template: plain}\n        - {variant: saved, template: saved}",
            "template: plain",
        )
    )
    assert experiments_of(plain) == []


def test_a_journeys_holdout_is_measured_as_its_own_experiment(tmp_path: Path):
    """Held-out users entered and were sent nothing: converting 10% against the messaged users' 20%, the
    journey's lift must show, measured from the instances the runs recorded."""
    definition = journey(EXPERIMENT.replace("entry:", "holdout: 30\nentry:"))
    runner = Runner(definition, users=pl.LazyFrame({"user_id": USERS}))
    runner.run(T0, entered=USERS)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    with connect(url).begin() as conn:
        insert_new(conn, JourneyInstance.__table__, runner.state.with_columns(pl.lit("r0").alias("run_id")).to_dicts())
    held = set(runner.state.filter(pl.col("holdout")).get_column("user_id"))
    rng = np.random.default_rng(11)
    rows, direct = [], []
    for user in USERS:
        arm = "holdout" if user in held else "messaged"
        converted = rng.random() < (0.1 if arm == "holdout" else 0.2)
        if converted:
            rows.append((user, "purchase", T0 + timedelta(hours=5), 1.0))
        direct.append({"arm": arm, "converted": converted, "value": 1.0 if converted else 0.0, "pre_value": 0.0})
    [report] = report_experiments(connect(url), [definition], events=events(rows), as_of=T0 + 10 * D)
    assert report.experiment.kind == "holdout" and report.experiment.title == "winback / holdout"
    assert report.result.arm("holdout").users == len(held) and abs(len(held) / len(USERS) - 0.3) < 0.03
    assert report.result == analyze(
        pl.DataFrame(direct), control="holdout", expected_weights={"holdout": 30, "messaged": 70}
    )
    [versus] = report.result.conversion
    assert versus.variant == "messaged" and versus.p_value_holm < 0.001


def test_guardrails_count_users_with_an_open_or_a_click_per_arm(tmp_path: Path):
    runner, url = recorded(tmp_path, USERS[:600])
    [experiment] = experiments_of(runner.definition)
    with connect(url).begin() as conn:
        conn.exec_driver_sql("update outbox set status = 'accepted' where status = 'planned'")
        sent = conn.exec_driver_sql("select send_key, user_id, variant from outbox where status = 'accepted'").all()
    facts = []
    for number, (key, user, _) in enumerate(sent):
        if number % 2 == 0:
            facts.append(
                {"sg_event_id": f"o{number}", "send_key": key, "user_id": user, "kind": "opened", "ts": T0 + D}
            )
            facts.append(
                {"sg_event_id": f"p{number}", "send_key": key, "user_id": user, "kind": "opened", "ts": T0 + D}
            )
        if number % 5 == 0:
            late = T0 + (20 if number % 10 == 0 else 1) * D  # half of them reported after the as_of
            facts.append({"sg_event_id": f"c{number}", "send_key": key, "user_id": user, "kind": "clicked", "ts": late})
    with connect(url).begin() as conn:
        insert_new(conn, DeliveryFact.__table__, facts)
    checks = guardrails(connect(url), experiment, as_of=T0 + 10 * D)
    expected = {arm: [0, 0, 0] for arm in ("control", "saved")}
    for number, (_, _, variant) in enumerate(sent):
        expected[variant][0] += 1
        expected[variant][1] += number % 2 == 0
        expected[variant][2] += number % 5 == 0 and number % 10 != 0
    assert {arm: [s, o, c] for arm, s, o, c in checks.iter_rows()} == expected
    [report] = report_experiments(connect(url), [runner.definition], events=events([]), as_of=T0 + 10 * D)
    assert "Guardrails" in report.markdown() and f"| control | {expected['control'][0]:,} |" in report.markdown()
