"""The full-day benchmark's definitions stay valid: a broken one would only show after an hour of generation."""

from pathlib import Path

from bench.day import build_definitions
from engine.definitions import load_definitions
from engine.render import TemplateStore
from engine.settings import REPO_ROOT


def test_the_full_day_scenario_loads_with_both_channels(tmp_path: Path):
    digest = build_definitions(tmp_path / "definitions")
    definitions = load_definitions(tmp_path / "definitions", TemplateStore(REPO_ROOT / "templates"))

    assert len(definitions.segments) == 20
    assert sorted(definitions.journeys) == ["browse_nudge", "cart_keyed", "cart_rescue", "vip_care", "winback"]
    channels = {
        node.send.channel
        for journey in definitions.journeys.values()
        for node in journey.nodes.values()
        if getattr(node, "send", None) is not None
    }
    assert channels == {"email", "push"}
    assert build_definitions(tmp_path / "again") == digest  # the digest names the files' content, not where
