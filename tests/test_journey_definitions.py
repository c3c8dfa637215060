"""Journey definitions with the new nodes and settings: refused with their reason, located in the file."""

import textwrap
from pathlib import Path

import polars as pl
import pytest
import yaml
from pydantic import ValidationError

from engine.definition_checks import check_against_snapshot
from engine.definitions import load_definitions
from engine.render import TemplateStore
from engine.yaml_source import DefinitionError
from models.journeys import JourneyDefinition

BASE = {
    "name": "j",
    "entry": {"event": "add_to_cart", "key": "cart_id"},
    "start": "wait",
    "nodes": {
        "wait": {"wait_for": {"event": "purchase"}, "timeout": "1d", "matched": "done", "timed_out": "test"},
        "test": {"split": [{"weight": 1, "next": "done"}, {"weight": 1, "next": "later"}]},
        "later": {"delay": "1d", "next": "done"},
        "done": {"exit": "completed"},
    },
}


def refused(**changes: object) -> str:
    data = yaml.safe_load(yaml.safe_dump(BASE)) | changes
    with pytest.raises(ValidationError) as caught:
        JourneyDefinition.model_validate(data)
    return str(caught.value)


def with_node(node_id: str, node: dict) -> dict:
    return BASE["nodes"] | {node_id: node}


def test_the_base_journey_is_valid():
    JourneyDefinition.model_validate(BASE)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"nodes": with_node("wait", {**BASE["nodes"]["wait"], "timed_out": "gone"})}, "'wait' leads to 'gone'"),
        ({"nodes": with_node("test", {"split": [{"weight": 1, "next": "done"}, {"weight": 1, "next": "nope"}]})},
         "'test' leads to 'nope'"),
        ({"nodes": with_node("later", {"delay": {"until_attribute": "renews_at"}, "next": "test"})},
         "form a loop in which nothing takes time"),
        ({"nodes": with_node("wait", {**BASE["nodes"]["wait"], "wait_for": {"event": "x", "match_key": True}}),
          "entry": {"segment": "s"}}, "match_key needs an event entry with a key: node 'wait'"),
        ({"goal": {"event": "purchase", "within": "3d", "match_key": True}, "entry": {"event": "add_to_cart"}},
         "match_key needs an event entry with a key: the goal"),
        ({"nodes": with_node("done", {"exit": "goal"})}, "recorded by the engine itself"),
        ({"exit_when": [{"when": {"segment": "s"}, "reason": "version_removed_node"}]}, "recorded by the engine"),
        ({"nodes": with_node("later", {"delay": {"until_local_time": 540}, "next": "done"})}, "quote it"),
        ({"nodes": with_node("later", {"delay": {"until_local_time": "25:00"}, "next": "done"})}, "time of day"),
        ({"entry": {"segment": "s", "event": "e"}}, "exactly one of the keys: segment, event, broadcast"),
        ({"starts_at": "2026-10-02", "ends_at": "2026-10-01"}, "starts_at must be before ends_at"),
        ({"entry": {"broadcast": "s", "at": "2026-09-01T09:00:00Z"}, "starts_at": "2026-10-01"},
         "broadcast time is outside"),
        ({"nodes": with_node("test", {"split": [{"weight": 1, "next": "done"}, {"weight": 1, "next": "done"}]})},
         "arm names must differ"),
        ({"nodes": with_node("test", {"split": [{"weight": 0, "next": "done"}, {"weight": 1, "next": "later"}]})},
         "greater than 0"),
        ({"holdout": 100}, "less than or equal to 99"),
        ({"entry": {"event": "add_to_cart", "reentry": {}}}, "give 'every: <duration>', 'times: <count>' or both"),
    ],
)  # fmt: skip
def test_broken_settings_and_nodes_are_refused(changes: dict, message: str):
    assert message in refused(**changes)


def test_a_loop_through_a_wait_for_or_a_local_time_delay_is_allowed():
    loop = with_node("later", {"delay": {"until_local_time": "09:00"}, "next": "wait"})
    JourneyDefinition.model_validate(BASE | {"nodes": loop})


def write(tree: Path, name: str, text: str) -> None:
    (tree / "definitions" / "journeys" / f"{name}.yaml").write_text(textwrap.dedent(text))


def problems(tree: Path) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        load_definitions(tree / "definitions", TemplateStore(tree / "templates"))
    return [str(problem) for problem in caught.value.problems]


def test_unknown_segments_anywhere_in_a_journey_are_located(tree: Path):
    write(
        tree,
        "promo",
        """\
        name: promo
        entry: {broadcast: loyalist, at: 2026-10-01T09:00:00Z}
        exit_when:
          - {when: {not: {segment: loyalsts}}, reason: left}
        start: wait
        nodes:
          wait: {wait_for: {segment: top_spender}, timeout: 3d, matched: done, timed_out: done}
          done: {exit: completed}
        """,
    )
    assert problems(tree) == [
        "journeys/promo.yaml:2: entry.broadcast: unknown segment 'loyalist'",
        "journeys/promo.yaml:7: nodes.wait.wait_for.segment: unknown segment 'top_spender'",
        "journeys/promo.yaml:4: exit_when.0.when.not.segment: unknown segment 'loyalsts'",
    ]


def test_events_and_date_attributes_a_journey_reads_are_checked_against_the_snapshot(tree: Path):
    write(
        tree,
        "renewal",
        """\
        name: renewal
        entry: {event: add_to_cart, key: cart_id}
        goal: {event: purchse, within: 3d}
        start: wait
        nodes:
          wait: {wait_for: {event: purchase}, timeout: 1d, matched: before, timed_out: before}
          before: {delay: {until_attribute: renews_at, offset: -3d}, next: done}
          done: {exit: completed}
        """,
    )
    definitions = load_definitions(tree / "definitions", TemplateStore(tree / "templates"))
    sites = [site for site in definitions.rule_sites if site.file == "journeys/renewal.yaml"]
    schema = pl.Schema({"user_id": pl.String, "renews_at": pl.Datetime("us", "UTC")})
    warnings, _ = check_against_snapshot(sites, users_schema=schema, events={"add_to_cart", "purchase"})
    assert warnings == ["journeys/renewal.yaml:3: event 'purchse' does not occur in the snapshot"]
    with pytest.raises(DefinitionError, match=r"renewal.yaml:7: nodes.before.delay.until_attribute.*needs a time"):
        check_against_snapshot(sites, users_schema=pl.Schema({"renews_at": pl.String}), events={"purchase"})
