"""The engine's journey step on generated sample data, without Prefect: a keyed event journey made active.

The shipped cart_recovery draft is switched to active in a copy of the definitions, so live runs enter it on
`add_to_cart` per cart, persist its state, plan its messages under the delivery controls, and rerun as no-ops.
"""

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import polars as pl
import pytest
from sqlalchemy import select

from engine.db import connect
from engine.definitions import Definitions, load_definitions
from engine.pipeline import JourneySummary, RunContext, advance_journeys, ingest, recompute_segments
from engine.render import TemplateStore
from engine.sample.generate import generate
from engine.settings import REPO_ROOT, EngineSettings
from models.tables import JourneyInstance, OutboxMessage

START = date(2026, 9, 1)
RUNS = [datetime.combine(START + timedelta(days=10 + i), time(6), UTC) for i in range(3)]


@dataclass
class World:
    settings: EngineSettings
    definitions: Definitions
    summaries: list[list[JourneySummary]]

    def rows(self, table: type) -> pl.DataFrame:
        with connect(self.settings.database).connect() as conn:
            result = conn.execute(select(table.__table__)).mappings().all()  # type: ignore[attr-defined]
        return pl.DataFrame([dict(row) for row in result], infer_schema_length=None)

    def run(self, as_of: datetime, number: int) -> list[JourneySummary]:
        ctx = RunContext(run_id=f"run-{number}", as_of=as_of, dry_run=False, settings=self.settings)
        ingest(ctx)
        database = connect(self.settings.database)
        return advance_journeys(ctx, self.definitions, database, recompute_segments(ctx, self.definitions, database))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("journeys")
    generate(home / "snapshot", users=400, days=13, start=START, seed=5)
    definitions_dir = home / "definitions"
    shutil.copytree(REPO_ROOT / "definitions", definitions_dir)
    draft = definitions_dir / "journeys" / "cart_recovery.yaml"
    draft.write_text(draft.read_text().replace("status: draft", "status: active"))
    settings = EngineSettings(home=home, snapshot_dir=home / "snapshot", definitions_dir=definitions_dir)
    definitions = load_definitions(definitions_dir, TemplateStore(settings.templates_dir))
    world = World(settings, definitions, [])
    world.summaries = [world.run(as_of, number) for number, as_of in enumerate(RUNS)]
    yield world


def test_each_cart_added_enters_once_with_its_key(world: World):
    instances = world.rows(JourneyInstance).filter(pl.col("journey") == "cart_recovery")
    assert instances.height >= 20, "too small to mean anything"
    assert instances.get_column("entry_key").null_count() == 0
    assert instances.select("user_id", "entry_key").is_unique().all()
    assert (instances.get_column("entry_key").str.split("-").list.first() == instances.get_column("user_id")).all()
    assert set(instances.get_column("version")) == {world.definitions.journey_version("cart_recovery")}
    entered = [summary.entered for run in world.summaries for summary in run if summary.name == "cart_recovery"]
    assert sum(entered) == instances.height


def test_held_out_carts_plan_no_message_and_messages_carry_the_version(world: World):
    instances = world.rows(JourneyInstance).filter(pl.col("journey") == "cart_recovery")
    outbox = world.rows(OutboxMessage).filter(pl.col("journey") == "cart_recovery")
    assert outbox.height > 0
    held = instances.filter(pl.col("holdout")).get_column("instance_id")
    assert held.len() > 0 and not outbox.get_column("instance_id").is_in(held.implode()).any()
    assert set(outbox.get_column("journey_version")) == {world.definitions.journey_version("cart_recovery")}


def test_rerunning_the_last_as_of_takes_no_step_in_any_journey(world: World):
    before = world.rows(JourneyInstance).sort("instance_id")
    summaries = world.run(RUNS[-1], 99)
    assert all(summary.transitions == 0 and summary.entered == 0 for summary in summaries)
    assert world.rows(JourneyInstance).drop("run_id").sort("instance_id").equals(before.drop("run_id"))
