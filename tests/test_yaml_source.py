"""YAML definitions: plain data, a version hash, and problems located by file, line and field."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path
from typing import Annotated, Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Tag, ValidationError, field_validator

from engine.yaml_source import DefinitionError, Problem, load_yaml, validate_document


def _single_key(value: Any) -> str | None:
    """The rule language's discriminator: a condition is a one-key mapping named for its kind."""
    return next(iter(value)) if isinstance(value, dict) and len(value) == 1 else None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PerformedSpec(_Strict):
    event: str
    within: int

    @field_validator("event")
    @classmethod
    def _snake_case(cls, value: str) -> str:
        if not value.replace("_", "").isalnum() or value.lower() != value:
            raise ValueError(f"event names are snake_case, got {value!r}")
        return value


class Performed(_Strict):
    performed: PerformedSpec


class All(_Strict):
    all: list[Rule]


Rule = Annotated[
    Annotated[Performed, Tag("performed")] | Annotated[All, Tag("all")],
    Discriminator(_single_key),
]
All.model_rebuild()


class Segment(_Strict):
    name: str
    rule: Rule


GOOD = """\
name: cart
rule:
  all:
    - performed:
        event: add_to_cart
        within: 3
    - performed:
        event: checkout
        within: 7
"""


def _write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _problems(path: Path, root: Path | None = None) -> list[Problem]:
    with pytest.raises(DefinitionError) as raised:
        validate_document(load_yaml(path, root=root), Segment, root=root)
    return raised.value.problems


def _only(path: Path) -> Problem:
    [problem] = _problems(path)
    return problem


def test_loads_plain_data_with_a_hash_of_the_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path, "cart.yaml", GOOD)

    doc = load_yaml(path)

    assert doc.data == yaml.safe_load(GOOD)
    assert doc.text == GOOD
    assert doc.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    segment = validate_document(doc, Segment)
    assert isinstance(segment.rule, All)
    assert segment.rule.all[1].performed.event == "checkout"


def test_line_of_finds_keys_and_items_and_falls_back_to_the_parent(tmp_path: Path) -> None:
    doc = load_yaml(_write(tmp_path, "cart.yaml", GOOD))

    assert doc.line_of(()) == 1
    assert doc.line_of(("rule",)) == 2
    assert doc.line_of(("rule", "all", 1)) == 7
    assert doc.line_of(("rule", "all", 1, "performed", "within")) == 9
    assert doc.line_of(("rule", "all", 1, "performed", "no_such_field")) == 7
    assert doc.line_of(("rule", "all", 9)) == 3


def test_wrong_type_deep_inside_a_list(tmp_path: Path) -> None:
    path = _write(tmp_path, "cart.yaml", GOOD.replace("within: 7", "within: soon"))

    problem = _only(path)

    assert (problem.line, problem.field) == (9, "rule.all[1].performed.within")
    assert problem.message.startswith("Input should be a valid integer")
    assert "(got 'soon')" in problem.message


def test_tag_names_in_pydantic_loc_are_skipped(tmp_path: Path) -> None:
    """pydantic puts each tag in loc next to the field of the same name; the data has it once."""
    path = _write(tmp_path, "cart.yaml", GOOD.replace("within: 7", "within: soon"))
    with pytest.raises(ValidationError) as raised:
        Segment.model_validate(load_yaml(path).data)
    assert raised.value.errors()[0]["loc"] == ("rule", "all", "all", 1, "performed", "performed", "within")

    assert _only(path).field == "rule.all[1].performed.within"


def test_missing_required_field_points_at_its_parent(tmp_path: Path) -> None:
    path = _write(tmp_path, "cart.yaml", GOOD.replace("        within: 7\n", ""))

    problem = _only(path)

    assert (problem.line, problem.field, problem.message) == (7, "rule.all[1].performed.within", "Field required")


def test_validator_message_is_shown_without_pydantic_prefix_or_repeated_input(tmp_path: Path) -> None:
    path = _write(tmp_path, "cart.yaml", GOOD.replace("event: checkout", "event: Check Out"))

    problem = _only(path)

    assert (problem.line, problem.field) == (8, "rule.all[1].performed.event")
    assert problem.message == "event names are snake_case, got 'Check Out'"


def test_unknown_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "cart.yaml", GOOD + "description: abandoned carts\n")

    problem = _only(path)

    assert (problem.line, problem.field) == (10, "description")
    assert problem.message == "Extra inputs are not permitted (got 'abandoned carts')"


def test_unknown_union_tag(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "cart.yaml",
        GOOD.replace("- performed:\n        event: checkout", "- purchased:\n        event: checkout"),
    )

    problem = _only(path)

    assert (problem.line, problem.field) == (7, "rule.all[1]")
    assert problem.message.startswith("unknown kind 'purchased', expected one of: 'performed', 'all'")


def test_duplicate_key_is_refused_with_both_lines(tmp_path: Path) -> None:
    path = _write(tmp_path, "cart.yaml", GOOD.replace("within: 7", "within: 7\n        event: purchase"))

    with pytest.raises(DefinitionError) as raised:
        load_yaml(path)

    [problem] = raised.value.problems
    assert (problem.line, problem.field) == (10, "rule.all[1].performed.event")
    assert problem.message == "duplicate key 'event' (first defined on line 8)"


def test_overriding_a_merged_key_is_not_a_duplicate(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "merge.yaml",
        """\
        base: &base {event: view, within: 1}
        override: {<<: *base, within: 2}
        """,
    )

    doc = load_yaml(path)

    assert doc.data["override"] == {"event": "view", "within": 2}
    assert doc.line_of(("override", "event")) == 1  # where the merged value was written


def test_yaml_syntax_error_has_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "cart.yaml", "name: cart\nrule:\n  all: [a, b\n  other: 1\n")

    with pytest.raises(DefinitionError) as raised:
        load_yaml(path)

    [problem] = raised.value.problems
    assert (problem.line, problem.field) == (4, "")
    assert "flow sequence at line 3" in problem.message


def test_str_names_file_relative_to_root_one_problem_per_line(tmp_path: Path) -> None:
    text = GOOD.replace("within: 3", "within: soon").replace("        within: 7\n", "")
    path = _write(tmp_path, "segments/cart.yaml", text)

    with pytest.raises(DefinitionError) as raised:
        validate_document(load_yaml(path, root=tmp_path), Segment, root=tmp_path)

    assert str(raised.value).splitlines() == [
        "segments/cart.yaml:6: rule.all[0].performed.within: "
        "Input should be a valid integer, unable to parse string as an integer (got 'soon')",
        "segments/cart.yaml:7: rule.all[1].performed.within: Field required",
    ]


def test_empty_document_is_a_problem_at_line_one(tmp_path: Path) -> None:
    problem = _only(_write(tmp_path, "empty.yaml", ""))

    assert (problem.line, problem.field) == (1, "")
    assert "(got None)" in problem.message


def test_invalid_utf8_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"name: cart\nrule: \xff\n")

    with pytest.raises(DefinitionError, match=r"bad.yaml:2: not valid UTF-8"):
        load_yaml(path)
