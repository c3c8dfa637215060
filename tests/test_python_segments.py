"""Python segments: loaded, versioned, dry-run and refused like YAML ones, computed like them."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from engine.behaviour import Behaviour
from engine.definitions import load_definitions
from engine.python_segments import compute_python_memberships, dry_run
from engine.render import TemplateStore
from engine.settings import REPO_ROOT
from engine.yaml_source import DefinitionError
from tests.behaviours import behaviour_from_rows

AS_OF = datetime(2026, 10, 1, 6, tzinfo=UTC)
USERS_SCHEMA = pl.Schema({"user_id": pl.String, "plan": pl.String})


def load(tree: Path):
    return load_definitions(tree / "definitions", TemplateStore(tree / "templates"))


def behaviour(rows: list[tuple[str, str, datetime, float]]) -> Behaviour:
    return behaviour_from_rows(rows, AS_OF)


def test_the_shipped_python_segment_matches_a_plain_computation():
    definitions = load_definitions(REPO_ROOT / "definitions", TemplateStore(REPO_ROOT / "templates"))
    assert "segments/top_spenders.py" in definitions.versions
    spends = {f"u{i}": float(i) for i in range(1, 21)}  # u1 spends 1, ..., u20 spends 20
    rows = [(user, "purchase", AS_OF - timedelta(days=3), value) for user, value in spends.items()]
    rows.append(("u1", "purchase", AS_OF - timedelta(days=40), 1000.0))  # outside the 30 days
    users = pl.LazyFrame({"user_id": [*spends, "nobody"]})

    got = compute_python_memberships(definitions.python_segments, users, behaviour(rows))["top_spenders"]

    ranked = sorted(spends.values())
    threshold = ranked[int(0.9 * (len(ranked) - 1))]
    assert got.to_list() == sorted(user for user, spend in spends.items() if spend >= threshold)


def test_a_python_segment_may_read_free_attributes_and_returns_known_users_only(tree: Path):
    (tree / "definitions/segments/pro_users.py").write_text(
        "import polars as pl\n\ndef segment(users, behaviour):\n    return pl.col('plan') == 'pro'\n"
    )
    definitions = load(tree)
    dry_run(definitions.python_segments, USERS_SCHEMA)
    users = pl.LazyFrame({"user_id": ["a", "b", "c"], "plan": ["pro", "free", None]})
    got = compute_python_memberships(definitions.python_segments, users, behaviour([]))
    assert got["pro_users"].to_list() == ["a"]


def test_a_file_that_does_not_import_is_refused_with_its_line(tree: Path):
    (tree / "definitions/segments/broken.py").write_text("import polars as pl\n\ndef segment(users, behaviour)\n")
    with pytest.raises(DefinitionError) as caught:
        load(tree)
    assert str(caught.value).startswith("segments/broken.py:3:")


def test_a_file_without_the_entry_point_is_refused(tree: Path):
    (tree / "definitions/segments/nothing.py").write_text("def members(users):\n    return None\n")
    with pytest.raises(DefinitionError, match=r"segments/nothing.py:1: segment: define `def segment"):
        load(tree)


def test_a_segment_returning_the_wrong_shape_is_refused_before_use(tree: Path):
    (tree / "definitions/segments/wrong.py").write_text("def segment(users, behaviour):\n    return ['a']\n")
    definitions = load(tree)
    with pytest.raises(DefinitionError, match=r"segments/wrong.py:1: segment: fails on an empty population"):
        dry_run(definitions.python_segments, USERS_SCHEMA)


def test_a_segment_reading_a_column_the_snapshot_lacks_is_refused_before_use(tree: Path):
    (tree / "definitions/segments/vip.py").write_text(
        "import polars as pl\n\n\ndef segment(users, behaviour):\n    return pl.col('vip_tier') > 2\n"
    )
    definitions = load(tree)
    with pytest.raises(DefinitionError, match=r"segments/vip.py:4: segment: .*vip_tier"):
        dry_run(definitions.python_segments, USERS_SCHEMA)


def test_yaml_cannot_reference_a_python_segment_yet_but_a_journey_may_enter_on_one(tree: Path):
    (tree / "definitions/segments/loyal_top.yaml").write_text(
        "name: loyal_top\nrule:\n  all:\n    - segment: loyalists\n    - segment: top_spenders\n"
    )
    with pytest.raises(DefinitionError, match="Python segment"):
        load(tree)
    (tree / "definitions/segments/loyal_top.yaml").unlink()
    journey = tree / "definitions/journeys/abandoned_cart.yaml"
    journey.write_text(journey.read_text().replace("segment: cart_abandoners", "segment: top_spenders"))
    assert load(tree).journeys["abandoned_cart"].entry.segment == "top_spenders"
