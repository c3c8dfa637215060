"""Exactly-once journey steps through the real pipeline: reruns and a run that fails part-way.

Two databases see the same generated sample data and the same three daily runs of two active journeys
(`abandoned_cart`, and the `cart_recovery` draft switched to active). In one every run goes through. In the
other the second run fails after the first journey's transaction committed and before the second journey's
(an exception injected in `save_step`, the per-journey write), and the run is then redone without the fault.
Both must end with the same instances, transitions and outbox rows, except for the run ids that wrote them;
rerunning an as_of that already went through must take no step at all.
"""

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from sqlalchemy import func, select

import engine.pipeline
from engine.db import connect
from engine.definitions import Definitions, load_definitions
from engine.journey_store import save_step
from engine.pipeline import JourneySummary, RunContext, advance_journeys, ingest, recompute_segments
from engine.render import TemplateStore
from engine.sample.generate import generate
from engine.settings import REPO_ROOT, EngineSettings
from models.tables import JourneyInstance, JourneyTransition, OutboxMessage

START = date(2026, 9, 1)
RUNS = [datetime.combine(START + timedelta(days=10 + i), time(6), UTC) for i in range(3)]
TABLES = {"instances": JourneyInstance, "transitions": JourneyTransition, "outbox": OutboxMessage}
KEYS = {"instances": ["instance_id"], "transitions": ["instance_id", "step"], "outbox": ["send_key"]}
JOURNEYS = ("abandoned_cart", "cart_recovery")


class InjectedFault(RuntimeError):
    """The failure injected between two journeys' writes."""


@dataclass
class World:
    settings: EngineSettings
    definitions: Definitions

    def run(self, as_of: datetime, run_id: str) -> list[JourneySummary]:
        ctx = RunContext(run_id=run_id, as_of=as_of, dry_run=False, settings=self.settings)
        ingest(ctx)
        database = connect(self.settings.database)
        return advance_journeys(ctx, self.definitions, database, recompute_segments(ctx, self.definitions, database))

    def rows(self, table: type) -> pl.DataFrame:
        with connect(self.settings.database).connect() as conn:
            result = conn.execute(select(table.__table__)).mappings().all()  # type: ignore[attr-defined]
        return pl.DataFrame([dict(row) for row in result], infer_schema_length=None)

    def count(self, table: type, run_id: str) -> int:
        columns = table.__table__.c  # type: ignore[attr-defined]
        with connect(self.settings.database).connect() as conn:
            return conn.execute(select(func.count()).where(columns.run_id == run_id)).scalar_one()

    def state(self) -> dict[str, pl.DataFrame]:
        """Every journey table, without the run ids, in key order."""
        return {name: self.rows(table).drop("run_id").sort(KEYS[name]) for name, table in TABLES.items()}


@dataclass
class Outcome:
    straight: World
    interrupted: World
    partial: dict[str, dict[str, int]]  # per journey, the rows of the failed run it left behind
    redone: list[JourneySummary]
    rerun: list[JourneySummary]


def make_world(base: Path, name: str) -> World:
    settings = EngineSettings(home=base / name, snapshot_dir=base / "snapshot", definitions_dir=base / "definitions")
    return World(settings, load_definitions(settings.definitions_dir, TemplateStore(settings.templates_dir)))


def failing_second_save(calls: list[str]):
    """`save_step` that writes the first journey of a run and raises at the second, before writing it."""

    def wrapper(conn, *, result, outbox, run_id):
        calls.append(str(pl.concat([result.transitions.get_column("journey"), outbox.get_column("journey")]).first()))
        if len(calls) == 2:
            raise InjectedFault("injected after the first journey's transaction committed")
        return save_step(conn, result=result, outbox=outbox, run_id=run_id)

    return wrapper


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    base = tmp_path_factory.mktemp("rerun")
    generate(base / "snapshot", users=400, days=13, start=START, seed=5)
    shutil.copytree(REPO_ROOT / "definitions", base / "definitions")
    draft = base / "definitions" / "journeys" / "cart_recovery.yaml"
    draft.write_text(draft.read_text().replace("status: draft", "status: active"))

    straight = make_world(base, "straight")
    for number, as_of in enumerate(RUNS):
        straight.run(as_of, f"run-{number}")
    rerun = straight.run(RUNS[-1], "rerun")

    interrupted = make_world(base, "interrupted")
    interrupted.run(RUNS[0], "run-0")
    calls: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.pipeline, "save_step", failing_second_save(calls))
        with pytest.raises(InjectedFault):
            interrupted.run(RUNS[1], "run-1")
    assert calls == list(JOURNEYS), "the fault must fall between the two journeys"
    partial = {
        journey: {
            name: interrupted.rows(table).filter(pl.col("run_id") == "run-1", pl.col("journey") == journey).height
            for name, table in TABLES.items()
        }
        for journey in JOURNEYS
    }
    redone = interrupted.run(RUNS[1], "run-1-again")
    interrupted.run(RUNS[2], "run-2")
    yield Outcome(straight, interrupted, partial, redone, rerun)


def test_the_fault_left_the_first_journey_written_and_the_second_not(outcome: Outcome):
    first, second = (outcome.partial[journey] for journey in JOURNEYS)
    assert first["transitions"] > 0 and first["instances"] > 0
    assert second == {"instances": 0, "transitions": 0, "outbox": 0}


def test_the_redone_run_writes_only_what_the_failed_one_did_not(outcome: Outcome):
    redone = {summary.name: summary for summary in outcome.redone}
    assert redone["abandoned_cart"].transitions == 0 and redone["abandoned_cart"].entered == 0
    assert redone["cart_recovery"].transitions > 0
    assert outcome.interrupted.count(JourneyTransition, "run-1-again") == redone["cart_recovery"].transitions


def test_an_interrupted_and_redone_run_ends_in_the_same_state_as_an_uninterrupted_one(outcome: Outcome):
    """Same instances, transitions and outbox rows, skip reasons included: a message that lost arbitration to
    the first journey's message in the uninterrupted run is `lower_priority` in the redone one too, not capped by
    a message of its own run (a regression: it used to be recorded as `frequency_cap:email:day`)."""
    straight, interrupted = outcome.straight.state(), outcome.interrupted.state()
    assert straight["transitions"].height > 0 and straight["outbox"].height > 0
    assert straight["outbox"].filter(pl.col("reason") == "lower_priority").height > 0
    for name in TABLES:
        assert set(straight[name].get_column("journey")) == set(JOURNEYS), name
        assert_frame_equal(interrupted[name], straight[name], check_column_order=False)


def test_rerunning_the_same_as_of_makes_no_new_transition(outcome: Outcome):
    assert [summary.name for summary in outcome.rerun] == list(JOURNEYS)
    assert all(summary.transitions == 0 and summary.entered == 0 for summary in outcome.rerun)
    for table in TABLES.values():
        assert outcome.straight.count(table, "rerun") == 0
