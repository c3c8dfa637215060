"""Editing a live journey: in-flight instances continue on the new version from their node, or exit if it is gone."""

from datetime import timedelta

import polars as pl
import pytest

from engine.journeys import runs_live
from tests.journey_harness import T0, Runner, journey

D = timedelta(days=1)

V1 = """
name: edited
entry: {segment: s}
start: first
nodes:
  first: {delay: 1d, next: mail}
  mail: {send: {channel: email, template: cart_reminder}, next: second}
  second: {delay: 3d, next: done}
  done: {exit: completed}
"""
V2 = """
name: edited
entry: {segment: s}
start: first
nodes:
  first: {delay: 5d, next: ping}
  ping: {send: {channel: push, template: cart_push}, next: third}
  third: {delay: 1d, next: done}
  done: {exit: completed}
"""


def in_flight() -> Runner:
    """`early` rests at `first` (due T0 + 2d), `late` at `second`, after a run of version v1."""
    runner = Runner(journey(V1))
    runner.run(T0, entered=["late"])
    runner.run(T0 + D, entered=["early"])
    return runner


def test_in_flight_instances_follow_the_new_version_from_their_node_keeping_their_due_time():
    runner = in_flight()
    runner.definition, runner.version = journey(V2), "v2"
    runner.run(T0 + 2 * D)
    early = runner.latest("early")
    assert (early["node"], early["version"]) == ("third", "v1"), "the 1d of v1 holds, then v2's path"
    assert runner.sends[-1] == ("early", "push", "cart_push", T0 + 2 * D)
    steps = runner.transitions.filter(pl.col("user_id") == "early", pl.col("at") == T0 + 2 * D)
    assert set(steps.get_column("version")) == {"v2"}


def test_an_instance_whose_node_is_gone_exits_with_version_removed_node():
    runner = in_flight()
    runner.definition, runner.version = journey(V2), "v2"
    _, result = runner.run(T0 + 2 * D)
    late = runner.latest("late")
    assert (late["node"], late["status"], late["exit_reason"]) == ("(exit)", "exited", "version_removed_node")
    assert runner.reasons("late")[-1] == "node second is not in this version"
    assert "late" not in result.sends.get_column("user_id").to_list()


def test_an_instance_whose_node_became_an_exit_exits_there():
    runner = in_flight()
    gate = "start: gate\nnodes:\n  gate: {branch: [{when: {segment: vip}, next: first}], otherwise: mail}"
    v2 = V1.replace("start: first\nnodes:", gate).replace("{delay: 1d, next: mail}", "{exit: retired}")
    runner.definition = journey(v2)
    runner.run(T0 + D + timedelta(hours=1))
    assert (runner.latest("early")["node"], runner.latest("early")["exit_reason"]) == ("first", "retired")
    assert runner.reasons("early")[-1] == "the node became an exit in this version"


@pytest.mark.parametrize(
    ("status", "live"), [("draft", False), ("active", True), ("paused", False), ("archived", False)]
)
def test_only_active_journeys_run_live(status: str, live: bool):
    assert runs_live(journey(V1 + f"status: {status}\n")) is live
