"""Simulating the shipped cart_recovery draft over generated sample data: entries, messages, no live trace."""

from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pytest

import engine.providers.factory
from engine.cli import main
from engine.sample.generate import generate
from engine.settings import EngineSettings
from engine.simulate import SimulationReport, simulate

START = date(2026, 9, 1)
DAYS = (START + timedelta(days=9), START + timedelta(days=12))


def listing(home: Path) -> dict[str, tuple[int, int]]:
    """Every file under the live home with its size and modification time."""
    return {str(path.relative_to(home)): (path.stat().st_size, path.stat().st_mtime_ns) for path in home.rglob("*")}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> EngineSettings:
    home = tmp_path_factory.mktemp("live")
    generate(home / "snapshot", users=400, days=13, start=START, seed=5)
    return EngineSettings(home=home)


@pytest.fixture(scope="module")
def reports(live: EngineSettings) -> tuple[SimulationReport, SimulationReport, dict, dict]:
    before = listing(live.home)

    def no_senders(*args: object, **kwargs: object) -> None:
        raise AssertionError("a simulation must not build provider clients")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.providers.factory, "build_email_sender", no_senders)
        patch.setattr(engine.providers.factory, "build_push_sender", no_senders)
        first = simulate("cart_recovery", *DAYS, settings=live)
        second = simulate("cart_recovery", *DAYS, settings=live)
    return first, second, before, listing(live.home)


def test_the_draft_enters_carts_and_plans_messages(reports):
    report, *_ = reports
    assert report.journey == "cart_recovery" and len(report.as_ofs) == 4
    assert report.entries > 10 and sum(report.entries_per_day.values()) == report.entries
    assert report.messages_per_channel.get("email", 0) > 0 and report.messages_per_channel.get("push", 0) > 0
    planned = report.messages.filter(pl.col("status") == "planned").group_by("channel").len()
    assert dict(planned.iter_rows()) == report.messages_per_channel
    assert report.goal_conversions >= 0
    last = report.node_counts.filter(pl.col("as_of") == pl.col("as_of").max())
    assert last.get_column("instances").sum() == report.entries, "every instance is somewhere after the last run"
    assert report.transitions.filter(pl.col("step") == 0).height == report.entries


def test_nothing_live_is_touched(reports, live: EngineSettings):
    *_, before, after = reports
    assert after == before, "the live home (database, store, snapshot) is exactly as it was"
    assert not (live.home / "nudge.db").exists() and not live.store_dir.exists()


def test_two_simulations_give_equal_reports(reports):
    first, second, *_ = reports
    assert first == second
    assert first.messages.height > 0 and first.messages.equals(second.messages)


def test_the_cli_prints_a_simulation(live: EngineSettings, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setenv("NUDGE_HOME", str(live.home))
    before = listing(live.home)
    main(["simulate", "cart_recovery", "--start", DAYS[1].isoformat(), "--end", DAYS[1].isoformat()])
    shown = capsys.readouterr().out
    assert "journey cart_recovery" in shown and "entries:" in shown and f"{DAYS[1]}: entered" in shown
    assert listing(live.home) == before


def test_the_simulation_flow_publishes_the_report(prefect_harness, live: EngineSettings, reports):
    """The deployment's flow: the same report as the plain function, and an artifact a person can read."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.simulate import simulate_journey

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NUDGE_HOME", str(live.home))
        report = simulate_journey(journey="cart_recovery", start=DAYS[0], end=DAYS[1])

    assert report == reports[0]
    key = f"simulation-cart-recovery-{DAYS[0]:%Y-%m-%d}-{DAYS[1]:%Y-%m-%d}"
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=1)
    assert f"- Entries: {report.entries:,}" in artifact.data
    assert f"{report.messages_per_channel['email']:,} email" in artifact.data
    assert artifact.data.count("\n| 2026-09-") == len(report.entries_per_day)
