"""Definitions checked against the snapshot: unknown names warn, impossible types fail, before any computation."""

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from engine.behaviour import Behaviour
from engine.contract import EVENT_SCHEMA
from engine.definition_checks import absent_attribute_columns, check_against_snapshot
from engine.definitions import load_definitions
from engine.render import TemplateStore
from engine.rollups import ROLLUP_SCHEMA
from engine.segments import compute_memberships
from engine.settings import REPO_ROOT
from engine.yaml_source import DefinitionError

USERS = pl.Schema({"user_id": pl.String, "signed_up_at": pl.Datetime("us", "UTC"), "plan": pl.String, "age": pl.Int64})
EVENTS = {"app_open", "add_to_cart", "purchase"}


def segment(tree: Path, name: str, rule: str):
    (tree / "definitions/segments" / f"{name}.yaml").write_text(f"name: {name}\nrule:\n{rule}")
    return load_definitions(tree / "definitions", TemplateStore(tree / "templates"))


def test_the_shipped_definitions_fit_the_sample_snapshot():
    definitions = load_definitions(REPO_ROOT / "definitions", TemplateStore(REPO_ROOT / "templates"))
    warnings, missing = check_against_snapshot(definitions.rule_sites, users_schema=USERS, events=EVENTS)
    assert (warnings, missing) == ([], set())


def test_an_unknown_event_warns_with_its_line(tree: Path):
    definitions = segment(tree, "typo", "  all:\n    - performed: {event: purchse, within: {last: 7d}}\n")
    warnings, _ = check_against_snapshot(definitions.rule_sites, users_schema=USERS, events=EVENTS)
    assert warnings == ["segments/typo.yaml:4: event 'purchse' does not occur in the snapshot"]


def test_an_absent_attribute_warns_and_reads_as_missing_for_everyone(tree: Path):
    definitions = segment(tree, "vip", "  not:\n    attribute: {name: vip_tier, gte: 3}\n")
    warnings, missing = check_against_snapshot(definitions.rule_sites, users_schema=USERS, events=EVENTS)
    assert missing == {"vip_tier"} and "attribute 'vip_tier' is not in the users snapshot" in warnings[0]

    users = pl.LazyFrame({"user_id": ["a", "b"]})
    users = users.with_columns(absent_attribute_columns(definitions.rule_sites, users.collect_schema()))
    empty = Behaviour(
        datetime(2026, 1, 1, tzinfo=UTC), pl.LazyFrame(schema=EVENT_SCHEMA), pl.LazyFrame(schema=ROLLUP_SCHEMA)
    )
    members = compute_memberships({"vip": definitions.segments["vip"]}, users, empty)
    assert members["vip"].to_list() == ["a", "b"], "nobody has vip_tier >= 3, so everybody is in 'not'"


@pytest.mark.parametrize(
    ("rule", "field", "needs"),
    [
        ("  attribute: {name: signed_up_at, gt: 5}\n", "rule.attribute.name", "needs a number"),
        ("  attribute: {name: plan, older_than: 7d}\n", "rule.attribute.name", "needs a time"),
        ("  attribute: {name: age, equals: gold}\n", "rule.attribute.name", "needs a text"),
        (
            "  performed: {event: app_open, within: {after: plan, for: 7d}}\n",
            "rule.performed.within.after",
            "needs a time",
        ),
    ],
)
def test_a_type_that_cannot_match_fails_naming_file_line_and_field(tree: Path, rule: str, field: str, needs: str):
    definitions = segment(tree, "bad", rule)
    with pytest.raises(DefinitionError) as caught:
        check_against_snapshot(definitions.rule_sites, users_schema=USERS, events=EVENTS)
    [problem] = caught.value.problems
    assert (problem.file, problem.line, problem.field) == ("segments/bad.yaml", 3, field)
    assert needs in problem.message


def test_since_entry_in_a_segment_is_refused_at_load(tree: Path):
    with pytest.raises(DefinitionError, match=r"segments/bad.yaml:3: rule.performed.within.since: 'since: entry'"):
        segment(tree, "bad", "  performed: {event: purchase, within: {since: entry}}\n")
