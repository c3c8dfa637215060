"""The new conditions load through the definitions loader, and a bad one is refused with file, line and field."""

import shutil
from pathlib import Path

import pytest

from engine.definitions import load_definitions
from engine.render import TemplateStore
from engine.settings import REPO_ROOT
from engine.yaml_source import DefinitionError

EVERY_KIND = """\
name: every_kind
rule:
  all:
    - performed: {event: purchase, where: {campaign_id: 8}, within: {between: {from: 2017-05-08, to: 2017-06-26}}}
    - not_performed: {event: purchase, within: {after_first: purchase, for: 30d, closed: right}}
    - aggregate: {event: purchase, fn: sum, within: {last: 30d}, gte: 100}
    - first_performed: {event: purchase, after: 30d}
    - last_performed: {event: purchase, within: {after: signed_up_at, for: 7d}}
    - any:
        - received: {journey: abandoned_cart, within: {last: 7d}}
        - opened: {template: cart_reminder}
        - clicked: {journey: abandoned_cart, template: cart_reminder, channel: email, at_least: 2}
    - not: {random_bucket: {seed: holdout-2026, from: 0, to: 10}}
    - attribute: {name: age, between: [18, 65]}
    - attribute: {name: email, matches: '@example\\.com$'}
    - attribute: {name: push_tokens, contains: abc}
    - attribute: {name: signed_up_at, before: 2026-01-01T00:00:00Z}
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copytree(REPO_ROOT / "definitions", tmp_path / "definitions")
    shutil.copytree(REPO_ROOT / "templates", tmp_path / "templates")
    return tmp_path


def write_segment(tree: Path, text: str) -> None:
    (tree / "definitions/segments/every_kind.yaml").write_text(text)


def problems(tree: Path) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        load_definitions(tree / "definitions", TemplateStore(tree / "templates"))
    return [str(p) for p in caught.value.problems]


def test_every_new_kind_of_condition_loads(tree: Path):
    write_segment(tree, EVERY_KIND)
    definitions = load_definitions(tree / "definitions", TemplateStore(tree / "templates"))
    assert "every_kind" in definitions.segments


@pytest.mark.parametrize(
    ("good", "bad", "where"),
    [
        (
            "'@example\\.com$'",
            "'@example(\\.com$'",
            "15: rule.all[8].attribute.matches: not a valid regular expression",
        ),
        ("from: 0, to: 10", "from: 10, to: 10", "13: rule.all[6].not.random_bucket: 'from' (10) must be below 'to'"),
        ("{last: 30d}, gte", "{last: 30d, for: 2d}, gte", "6: rule.all[2].aggregate.within: 'for: <duration>' goes"),
        ("fn: sum", "fn: total", "6: rule.all[2].aggregate.fn: Input should be 'sum', 'avg', 'min' or 'max'"),
        ("to: 2017-06-26", "to: 2017-05-08", "4: rule.all[0].performed.within.between: 'from' (2017-05-08T00:"),
        (
            "{campaign_id: 8}",
            "{campaign_id: [8]}",
            "4: rule.all[0].performed.where.campaign_id: expected a string, number or boolean, got [8]",
        ),
        ("after: 30d", "after: soon", "7: rule.all[3].first_performed.after: expected a duration before as_of"),
        ("[18, 65]", "[65, 18]", "14: rule.all[7].attribute.between: [65.0, 18.0] is empty"),
        ("closed: right", "closed: open", "5: rule.all[1].not_performed.within.closed: Input should be 'left'"),
        (
            "opened: {template: cart_reminder}",
            "opened: {channel: email}",
            "11: rule.all[5].any[1].opened: give 'journey'",
        ),
    ],
)
def test_a_bad_new_field_names_file_line_and_field(tree: Path, good: str, bad: str, where: str):
    assert good in EVERY_KIND
    write_segment(tree, EVERY_KIND.replace(good, bad, 1))
    [problem] = problems(tree)
    assert problem.startswith(f"segments/every_kind.yaml:{where}"), problem


def test_an_unknown_kind_lists_the_new_ones(tree: Path):
    write_segment(tree, EVERY_KIND.replace("first_performed:", "first_did:"))
    [problem] = problems(tree)
    assert problem.startswith("segments/every_kind.yaml:7: rule.all[3]: a condition is a mapping with one key")
    assert "first_did" in problem and "first_performed" in problem and "random_bucket" in problem
