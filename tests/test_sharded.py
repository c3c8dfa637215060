"""Sharding by user gives the single-process outputs: memberships, journey steps, outbox and what was sent.

The flow test runs the same days twice from one snapshot, once with the daily flow and once with the sharded
flow on a local Dask cluster (two worker processes, started once for the module), each world with its own home,
database and fake providers, and compares everything the runs left behind. The definitions are the shipped
ones plus what exercises every sharding rule: a Python segment declared per user (sharded) beside the shipped
`top_spenders` (a percentile, computed whole), the keyed event-entry journey `cart_recovery` activated (holdout,
split, wait-for, local-time delay), and a broadcast journey (whose "already broadcast" test reads every shard).
"""

import importlib
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal, assert_series_equal
from sqlalchemy import select

from engine import pipeline
from engine.db import connect
from engine.definitions import Definitions, load_definitions
from engine.fakes import FakeProviders
from engine.python_segments import compute_python_memberships
from engine.render import TemplateStore
from engine.sample.generate import generate
from engine.segments import compute_memberships
from engine.settings import REPO_ROOT, EngineSettings
from engine.shards import (
    Shard,
    all_shards,
    is_per_user,
    merge_memberships,
    shard_memberships,
    shard_numbers,
    sharded_memberships,
)
from engine.summary import RunSummary
from models.tables import JourneyInstance, JourneyTransition, OutboxMessage, SegmentSize
from tasks.shards import DaskSettings, dask_task_runner

START = date(2026, 9, 1)
HISTORY_DAYS = 20
RUN_TIMES = [datetime.combine(START + timedelta(days=HISTORY_DAYS - 4 + i), time(6), UTC) for i in range(3)]
SHARDS = 2

PER_USER_SEGMENT = '''"""Bought something worth 40 or more in the last 14 days: a test of each user's own purchases."""

from datetime import timedelta

import polars as pl

PER_USER = True


def segment(users, behaviour):
    recent = behaviour.events.filter(
        (pl.col("event") == "purchase") & (pl.col("ts") >= behaviour.as_of - timedelta(days=14))
    )
    return recent.filter(pl.col("value") >= 40).select("user_id")
'''

BROADCAST_JOURNEY = f"""name: loyalty_note
description: A broadcast to the loyalists on the second run day, who then wait a day and leave.
status: active
entry:
  broadcast: loyalists
  at: "{RUN_TIMES[1].isoformat()}"
start: wait_a_day
nodes:
  wait_a_day:
    delay: 1d
    next: done
  done:
    exit: completed
"""


# --- The shard function ---------------------------------------------------------------------------------------


def test_the_shard_is_icebergs_bucket_transform():
    """Iceberg's spec: murmur3 of "iceberg" is 1210000089, so bucket(N, "iceberg") is 1210000089 mod N."""
    ids = pl.Series("user_id", ["iceberg"])
    for count in (1, 2, 3, 7, 16, 1000):
        assert shard_numbers(ids, count).item() == 1210000089 % count


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.text(max_size=12), max_size=40), count=st.integers(1, 12))
def test_shards_partition_the_users(ids, count):
    """Every user is in exactly one shard, the same whatever else is in the frame or how often it is computed."""
    frame = pl.DataFrame({"user_id": ids, "row": range(len(ids))}, schema={"user_id": pl.String, "row": pl.Int64})
    numbers = shard_numbers(frame.get_column("user_id"), count)
    assert numbers.is_between(0, count - 1).all()
    parts = [shard.keep(frame) for shard in all_shards(count)]
    assert sum(part.height for part in parts) == frame.height
    assert_frame_equal(pl.concat(parts).sort("row"), frame)
    for shard, part in zip(all_shards(count), parts, strict=True):
        assert (shard_numbers(part.get_column("user_id"), count) == shard.index).all()
        alone = [shard.keep(frame.filter(pl.col("row") == row)).height for row in part.get_column("row")]
        assert alone == [1] * part.height  # a user's shard does not depend on the others
    assert_series_equal(shard_numbers(frame.get_column("user_id"), count), numbers)


def test_a_shard_outside_the_count_is_refused():
    with pytest.raises(ValueError, match="does not exist"):
        Shard(3, 3)
    with pytest.raises(ValueError, match="at least 1"):
        shard_numbers(pl.Series(["a"]), 0)


# --- Segments in one process ----------------------------------------------------------------------------------


@dataclass
class Snapshot:
    snapshot: Path
    definitions: Path
    templates: Path


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Snapshot:
    root = tmp_path_factory.mktemp("sharded")
    generate(root / "snapshot", users=700, days=HISTORY_DAYS, start=START, seed=5)
    definitions = root / "definitions"
    shutil.copytree(REPO_ROOT / "definitions", definitions)
    (definitions / "segments" / "recent_big_buyers.py").write_text(PER_USER_SEGMENT)
    recovery = definitions / "journeys" / "cart_recovery.yaml"
    recovery.write_text(recovery.read_text().replace("status: draft", "status: active"))
    (definitions / "journeys" / "loyalty_note.yaml").write_text(BROADCAST_JOURNEY)
    return Snapshot(root / "snapshot", definitions, REPO_ROOT / "templates")


@pytest.fixture(scope="module")
def seen(snapshot, tmp_path_factory) -> tuple[Definitions, pl.LazyFrame, pipeline.Behaviour]:
    """Definitions, users and behaviour at the last run time, from an ingested store."""
    home = tmp_path_factory.mktemp("seen")
    settings_ = EngineSettings(home=home, snapshot_dir=snapshot.snapshot, definitions_dir=snapshot.definitions)
    as_of = RUN_TIMES[-1]
    pipeline.ingest(pipeline.RunContext("r", as_of, True, settings_))
    definitions = load_definitions(snapshot.definitions, TemplateStore(snapshot.templates))
    return definitions, pipeline.users_at(settings_, as_of, definitions), pipeline.behaviour_at(settings_, as_of)


def single_process(definitions, users, behaviour) -> dict[str, pl.Series]:
    """What `pipeline.recompute_segments` computes."""
    memberships = compute_python_memberships(definitions.python_segments, users, behaviour)
    return memberships | compute_memberships(definitions.segments, users, behaviour)


def test_python_segments_are_sharded_only_when_declared_per_user(seen):
    definitions, _, _ = seen
    assert is_per_user(definitions.python_segments["recent_big_buyers"])
    assert not is_per_user(definitions.python_segments["top_spenders"])


@pytest.mark.parametrize("count", [1, 2, 5])
def test_sharded_memberships_equal_the_single_process_ones(seen, count):
    definitions, users, behaviour = seen
    expected = single_process(definitions, users, behaviour)
    got = sharded_memberships(definitions, users, behaviour, count)
    assert list(got) == list(expected)
    for name, members in expected.items():
        assert members.len() >= 10, f"{name} too small to mean anything"
        assert_series_equal(got[name], members, check_names=True)


def test_a_population_percentile_is_not_shardable(seen):
    """Why `top_spenders` is computed whole: its percentile taken per shard picks other users."""
    definitions, users, behaviour = seen
    top = {"top_spenders": definitions.python_segments["top_spenders"]}
    whole = compute_python_memberships(top, users, behaviour)["top_spenders"]
    parts = [compute_python_memberships(top, shard.keep(users), shard.behaviour(behaviour)) for shard in all_shards(4)]
    assert not merge_memberships(definitions, parts)["top_spenders"].equals(whole)


def test_each_shard_sees_only_its_users(seen):
    definitions, users, behaviour = seen
    shard = Shard(1, SHARDS)
    restricted = shard.behaviour(behaviour)
    for frame in (restricted.events, restricted.rollups, shard.keep(users)):
        ids = frame.select("user_id").collect().get_column("user_id")
        assert ids.len() > 0 and (shard_numbers(ids, SHARDS) == 1).all()
    members = shard_memberships(definitions, users, behaviour, shard)
    assert set(members) == {"recent_big_buyers", *definitions.segments}


def test_the_task_runner_is_a_local_cluster_unless_an_address_is_set(monkeypatch):
    runner = dask_task_runner(DaskSettings())
    assert runner.address is None
    assert runner.cluster_kwargs == {"n_workers": 2, "processes": True, "threads_per_worker": 1}
    monkeypatch.setenv("NUDGE_DASK_ADDRESS", "tcp://10.0.0.5:8786")
    assert dask_task_runner(DaskSettings()).address == "tcp://10.0.0.5:8786"


# --- The flows ------------------------------------------------------------------------------------------------


# Columns that name the run or the dispatcher, or hold wall-clock times of sending: they differ between any two
# runs, sharded or not.
RUN_COLUMNS = {"run_id", "dispatched_run_id", "claimed_by", "sending_at", "next_attempt_at", "provider_message_id"}


@dataclass
class Store:
    home: Path
    database_url: str

    def membership_files(self) -> list[Path]:
        return sorted(p.relative_to(self.home) for p in (self.home / "store" / "segments").rglob("*.parquet"))

    def rows(self, model) -> list[dict]:
        """A table's rows in key order, without the columns that differ between any two runs."""
        table = model.__table__
        with connect(self.database_url).connect() as conn:
            found = conn.execute(select(table).order_by(*table.primary_key.columns)).mappings().all()
        return [{k: v for k, v in row.items() if k not in RUN_COLUMNS} for row in found]

    def state(self) -> dict:
        """What a dry run must leave as it found it."""
        tables = (SegmentSize, JourneyInstance, JourneyTransition, OutboxMessage)
        return {"files": self.membership_files(), **{model.__name__: self.rows(model) for model in tables}}

    def scratch_left(self) -> list[Path]:
        return sorted((self.home / "shards").rglob("*"))


@dataclass
class World:
    store: Store
    summaries: list[RunSummary]
    emails: Counter
    pushes: Counter
    dry: RunSummary  # a dry run the day after the live ones
    before_dry: dict
    after_dry: dict


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """One local Dask cluster of two worker processes for the module; the sharded runs connect to its address.

    The workers import the engine while the single-process world runs (a cold worker takes seconds to import
    Prefect and Polars), so the first sharded run does not pay it.
    """
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as local,
        Client(local) as client,
    ):
        warm = [
            client.submit(lambda: bool(importlib.import_module("tasks.shards")), workers=[worker], pure=False)
            for worker in client.scheduler_info()["workers"]
        ]
        yield local.scheduler_address
        assert client.gather(warm) == [True] * len(warm)


def run_world(store: Store, snapshot: Snapshot, flow) -> World:
    """The live runs, then a dry run, with the world's own home, database and fake providers."""
    with FakeProviders(store.home / "fakes") as fakes, pytest.MonkeyPatch.context() as patch:
        env = {
            **fakes.env(),
            "NUDGE_HOME": str(store.home),
            "NUDGE_SNAPSHOT_DIR": str(snapshot.snapshot),
            "NUDGE_DEFINITIONS_DIR": str(snapshot.definitions),
            "NUDGE_DATABASE_URL": store.database_url,
        }
        for key, value in env.items():
            patch.setenv(key, value)
        summaries = [flow(as_of=as_of) for as_of in RUN_TIMES]
        before_dry = store.state()
        dry = flow(as_of=RUN_TIMES[-1] + timedelta(days=1), dry_run=True)
        emails = Counter(mail.email for mail in fakes.sendgrid.accepted())  # one per personalization accepted
        pushes = Counter(r.body["message"]["token"] for r in fakes.fcm.received("/v1/") if r.status == 200)
    return World(store, summaries, emails, pushes, dry, before_dry, store.state())


@pytest.fixture(scope="module")
def worlds(prefect_harness, snapshot, cluster, tmp_path_factory) -> tuple[World, World]:
    """The same days run by the daily flow and by the sharded flow on the local cluster."""
    from flows.daily import daily_campaign
    from flows.sharded import daily_campaign_sharded

    root = tmp_path_factory.mktemp("worlds")
    sharded = daily_campaign_sharded.with_options(task_runner=dask_task_runner(DaskSettings(address=cluster)))

    def sharded_flow(as_of: datetime, dry_run: bool = False) -> RunSummary:
        return sharded(as_of=as_of, dry_run=dry_run, shards=SHARDS)

    stores = [Store(root / name, f"sqlite:///{root / name / 'nudge.db'}") for name in ("single", "sharded")]
    return run_world(stores[0], snapshot, daily_campaign), run_world(stores[1], snapshot, sharded_flow)


@pytest.mark.slow
def test_sharded_runs_store_the_same_memberships(worlds):
    single, sharded = worlds
    files = single.store.membership_files()
    assert len(files) == 5 * len(RUN_TIMES)
    assert sharded.store.membership_files() == files
    for path in files:
        assert_frame_equal(pl.read_parquet(sharded.store.home / path), pl.read_parquet(single.store.home / path))
    assert sharded.store.rows(SegmentSize) == single.store.rows(SegmentSize)


@pytest.mark.slow
def test_sharded_runs_take_the_same_journey_steps(worlds):
    single, sharded = worlds
    transitions = single.store.rows(JourneyTransition)
    journeys = Counter(row["journey"] for row in transitions)
    assert journeys["abandoned_cart"] >= 20 and journeys["cart_recovery"] >= 20 and journeys["loyalty_note"] >= 5
    assert sharded.store.rows(JourneyTransition) == transitions
    assert sharded.store.rows(JourneyInstance) == single.store.rows(JourneyInstance)


@pytest.mark.slow
def test_sharded_runs_plan_and_send_the_same_messages(worlds):
    single, sharded = worlds
    planned = single.store.rows(OutboxMessage)
    assert len(planned) >= 20 and {row["status"] for row in planned} >= {"accepted", "skipped"}
    assert sharded.store.rows(OutboxMessage) == planned
    assert sum(single.emails.values()) >= 5 and sum(single.pushes.values()) >= 5
    assert (sharded.emails, sharded.pushes) == (single.emails, single.pushes)


@pytest.mark.slow
def test_sharded_runs_report_the_same_summaries(worlds):
    single, sharded = worlds
    for one, other in zip(single.summaries, sharded.summaries, strict=True):
        assert (other.as_of, other.segments, other.journeys) == (one.as_of, one.segments, one.journeys)
        assert other.delivery.keys() == one.delivery.keys()
    assert sharded.store.scratch_left() == []


@pytest.mark.slow
def test_a_sharded_dry_run_computes_the_same_and_writes_nothing(worlds):
    single, sharded = worlds
    assert (sharded.dry.segments, sharded.dry.journeys) == (single.dry.segments, single.dry.journeys)
    assert sum(journey.transitions for journey in sharded.dry.journeys) > 0
    assert sharded.after_dry == sharded.before_dry
    assert sharded.store.scratch_left() == []
