"""Definitions are refused before any run uses them, with errors that name file, line and field."""

from pathlib import Path

import pytest

from engine.definitions import load_definitions
from engine.render import TemplateStore
from engine.settings import REPO_ROOT
from engine.yaml_source import DefinitionError


def load(tree: Path):
    return load_definitions(tree / "definitions", TemplateStore(tree / "templates"))


def problems(tree: Path) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        load(tree)
    return [str(p) for p in caught.value.problems]


def test_the_shipped_definitions_load_and_carry_versions():
    definitions = load_definitions(REPO_ROOT / "definitions", TemplateStore(REPO_ROOT / "templates"))
    assert {"cart_abandoners", "dormant_new_users", "loyalists"} <= set(definitions.segments)
    assert "abandoned_cart" in definitions.journeys
    assert "templates/email/cart_reminder" in definitions.versions
    assert all(len(version) == 64 for version in definitions.versions.values())


def test_a_wrong_type_deep_in_a_rule_names_file_line_and_field(tree: Path):
    path = tree / "definitions/segments/loyalists.yaml"
    path.write_text(path.read_text().replace("at_least: 3", "at_least: three"))
    [problem] = problems(tree)
    assert problem.startswith("segments/loyalists.yaml:4: rule.performed.at_least:")


def test_an_unknown_duration_unit_is_refused(tree: Path):
    path = tree / "definitions/segments/cart_abandoners.yaml"
    path.write_text(path.read_text().replace("last: 7d}}\n    - not", "last: 7 days}}\n    - not"))
    [problem] = problems(tree)
    assert "segments/cart_abandoners.yaml:5: rule.all[0].performed.within.last" in problem
    assert "'7d'" in problem


def test_a_journey_leading_to_a_missing_node_is_refused(tree: Path):
    path = tree / "definitions/journeys/abandoned_cart.yaml"
    path.write_text(path.read_text().replace("next: wait_two_days", "next: wait_too_days"))
    [problem] = problems(tree)
    assert "journeys/abandoned_cart.yaml" in problem and "'wait_too_days'" in problem


def test_a_journey_entering_on_an_unknown_segment_is_refused(tree: Path):
    path = tree / "definitions/journeys/abandoned_cart.yaml"
    path.write_text(path.read_text().replace("segment: cart_abandoners", "segment: cart_abandonners"))
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "cart_abandonners" in text)
    [problem] = problems(tree)
    assert problem.startswith(f"journeys/abandoned_cart.yaml:{line}: entry.segment: unknown segment 'cart_abandonners'")


def test_segments_referencing_each_other_in_a_loop_are_refused(tree: Path):
    (tree / "definitions/segments/a.yaml").write_text("name: a\nrule: {segment: b}\n")
    (tree / "definitions/segments/b.yaml").write_text("name: b\nrule: {not: {segment: a}}\n")
    [problem] = problems(tree)
    assert "loop" in problem and "a -> b -> a" in problem


def test_a_template_reading_an_undefined_variable_is_refused_before_any_run(tree: Path):
    body = tree / "templates/email/cart_reminder/body.html.j2"
    body.write_text(body.read_text() + "\n{{ coupon_code }}\n")
    [problem] = problems(tree)
    assert "journeys/abandoned_cart.yaml" in problem and "nodes.email_reminder.send.variants.0.template" in problem
    assert "coupon_code" in problem and "body.html.j2" in problem


def test_every_problem_is_reported_at_once(tree: Path):
    for name in ("loyalists", "cart_abandoners"):
        path = tree / f"definitions/segments/{name}.yaml"
        path.write_text(path.read_text().replace("rule:", "rules:"))
    assert len(problems(tree)) >= 2
