"""The backfill flow in its three modes, through Prefect, against live runs of the daily flow and the fake providers.

Dry replay: computed in a shadow workspace from the live history, byte-identical when repeated, equal to the live
runs it replays, and invisible to live state and to the providers. Live backfill: runs only days never run, in
order, and records what they planned as skipped instead of sending it. Rebuild: late data changes the segment
sizes of the day it arrived for, and nothing else.
"""

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import Table, select

from engine.backfill import BackfillRefused
from engine.db import connect
from engine.fakes import FakeProviders
from engine.replay import OUTPUTS
from engine.sample.generate import generate
from engine.segments import MembershipStore
from engine.settings import REPO_ROOT
from engine.workspace import ComputedDay, WorkspaceState, input_fingerprints, reusable_days
from models.tables import JourneyInstance, JourneyTransition, OutboxMessage, Run, SegmentSize
from tests.snapshot_files import write

START = date(2026, 9, 1)
HISTORY_DAYS = 14


def day(n: int) -> date:
    return START + timedelta(days=n)


def at(n: int) -> datetime:
    """The daily schedule's as_of on day n of the sample."""
    return datetime.combine(day(n), time(6), UTC)


@dataclass
class World:
    """A live engine home with its own snapshot, database and fake providers."""

    home: Path
    snapshot: Path
    fakes: FakeProviders
    env: dict[str, str]

    @contextmanager
    def active(self) -> Iterator[None]:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in self.env.items():
                patch.setenv(name, value)
            yield

    def daily(self, as_of: datetime):
        from flows.daily import daily_campaign

        with self.active():
            return daily_campaign(as_of=as_of)

    def backfill(self, **parameters):
        from flows.backfill import backfill

        with self.active():
            return backfill(**parameters)

    def requests(self) -> int:
        """Every request either fake received, token fetches included."""
        return len(self.fakes.sendgrid.received()) + len(self.fakes.fcm.received())

    def rows(self, table: Table, *where) -> list[dict]:
        key = [c for c in table.primary_key.columns]
        with connect(self.env["NUDGE_DATABASE_URL"]).connect() as conn:
            return [dict(r) for r in conn.execute(select(table).where(*where).order_by(*key)).mappings().all()]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("snapshot") / "snapshot"
    generate(path, users=500, days=HISTORY_DAYS, start=START, seed=5)
    return path


@pytest.fixture(scope="module")
def make_world(prefect_harness, snapshot, tmp_path_factory) -> Iterator:
    """Builds worlds that share the generated snapshot (copied: a test may add late files to its own)."""
    started: list[FakeProviders] = []

    def make(name: str, live_days: list[int], database_url: str | None = None) -> World:
        home = tmp_path_factory.mktemp(name)
        shutil.copytree(snapshot, home / "snapshot")
        shutil.copytree(REPO_ROOT / "definitions", home / "definitions")
        fakes = FakeProviders(home / "fakes").start()
        started.append(fakes)
        env = {
            **fakes.env(),
            "NUDGE_HOME": str(home),
            "NUDGE_SNAPSHOT_DIR": str(home / "snapshot"),
            "NUDGE_DEFINITIONS_DIR": str(home / "definitions"),
            "NUDGE_DATABASE_URL": database_url or f"sqlite:///{home / 'nudge.db'}",
        }
        world = World(home, home / "snapshot", fakes, env)
        for n in live_days:
            world.daily(at(n))
        return world

    yield make
    for fakes in started:
        fakes.stop()


# Dry replay ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def replayed(make_world):
    """Live runs on days 8-10; then days 9-11 replayed into two workspaces, and into the first one again."""
    world = make_world("replay", [8, 9, 10])
    live_files = _tree_digest(world.home, skip="replays")
    live_tables = {t.name: world.rows(t) for t in _LIVE_TABLES}
    before = world.requests()
    reports = [world.backfill(start=day(9), end=day(11), workspace=name) for name in ("first", "second", "first")]
    after = world.requests()
    return world, reports, (before, after), (live_files, live_tables)


def test_a_replay_touches_no_live_state_and_sends_nothing(replayed):
    world, _, (before, after), (live_files, live_tables) = replayed
    assert after == before
    assert _tree_digest(world.home, skip="replays") == live_files
    assert {t.name: world.rows(t) for t in _LIVE_TABLES} == live_tables


def test_replaying_the_same_days_twice_gives_byte_identical_outputs(replayed):
    _, (first, second, again), _, _ = replayed
    assert first.requested == (at(9), at(10), at(11))
    assert first.history == (at(8),), "the live run before start is replayed to rebuild journey state"
    assert (first.computed, second.computed, again.computed) == (4, 4, 0), "the third one reuses the workspace"
    assert again.reused == 4
    for as_of in first.requested:
        files = sorted(p.name for p in first.outputs[as_of].iterdir())
        assert files == sorted(f"{name}.parquet" for name in OUTPUTS)
        for name in files:
            assert (first.outputs[as_of] / name).read_bytes() == (second.outputs[as_of] / name).read_bytes(), name
            assert (again.outputs[as_of] / name).read_bytes() == (second.outputs[as_of] / name).read_bytes(), name
    messages = pl.read_parquet(first.outputs[at(10)] / "messages.parquet")
    assert messages.height > 0 and "run_id" not in messages.columns
    assert messages.get_column("send_key").is_sorted()


def test_a_replay_of_days_run_live_reproduces_their_plans(replayed):
    """Same definitions, same inputs, same history: the shadow plans exactly what the live runs planned."""
    world, (first, *_), _, _ = replayed
    store = MembershipStore(world.home / "store" / "segments")
    for as_of in (at(9), at(10)):
        replayed_messages = pl.read_parquet(first.outputs[as_of] / "messages.parquet")
        live = world.rows(_OUTBOX, _OUTBOX.c.as_of == as_of)
        assert len(live) == replayed_messages.height > 0
        fate = {r["send_key"]: (r["status"] == "skipped", r["reason"], r["not_before"]) for r in live}
        for row in replayed_messages.iter_rows(named=True):
            assert fate[row["send_key"]] == (row["status"] == "skipped", row["reason"], row["not_before"])
        segments = pl.read_parquet(first.outputs[as_of] / "segments.parquet")
        for (name,), members in segments.group_by("segment"):
            assert members.get_column("user_id").to_list() == store.read(name, as_of).to_list()
    compared = [c for c in first.comparisons if c.as_of in (at(9), at(10))]
    assert compared and all(c.live == c.replay for c in compared)
    assert all(c.live is None for c in first.comparisons if c.as_of == at(11)), "day 11 never ran live"
    assert "Every day a live run served is the same as live." in first.markdown()


def test_a_replay_publishes_its_comparison_with_live(replayed):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["replay-second-comparison"]))
        )
    (artifact,) = artifacts
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert {row["as_of"] for row in rows} == {a.isoformat() for a in (at(9), at(10), at(11))}
    assert any(row["item"] == "segment cart_abandoners" for row in rows)


# Live backfill -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backfilled(request, make_world):
    """One live run on day 8, then a live backfill of days 9-11, which never ran."""
    url = request.getfixturevalue("postgres_server").database() if request.param == "postgresql" else None
    world = make_world(f"backfill-{request.param}", [8], database_url=url)
    before = world.requests()
    report = world.backfill(start=day(9), end=day(11), dry_run=False)
    return world, report, before


def test_a_live_backfill_runs_missed_days_and_records_their_messages_as_skipped(backfilled):
    world, report, before = backfilled
    assert world.requests() == before, "a backfill sends nothing"
    assert [run.as_of for run in report.runs] == [at(9), at(10), at(11)]
    runs = world.rows(_RUNS, _RUNS.c.as_of.in_([at(9), at(10), at(11)]))
    assert len(runs) == 3 and all(run["status"] == "completed" for run in runs)
    planned = world.rows(_OUTBOX, _OUTBOX.c.as_of.in_([at(9), at(10), at(11)]))
    backfill = [row for row in planned if row["reason"] == "backfill"]
    assert len(backfill) >= 5, "too few messages to mean anything"
    assert all(row["status"] == "skipped" and row["attempts"] == 0 for row in backfill)
    assert any(row["not_before"] is not None for row in backfill), "held messages are skipped too"
    assert not [row for row in planned if row["status"] != "skipped"], "nothing of a past day is left to send"
    skipped = sum(run.messages().get("email_skipped", 0) + run.messages().get("push_skipped", 0) for run in report.runs)
    assert skipped == len(planned)
    steps = world.rows(_TRANSITIONS, _TRANSITIONS.c.run_id.in_([run.run_id for run in report.runs]))
    assert steps, "journeys moved on through the missed days"


def test_rerunning_days_after_a_backfill_sends_nothing_twice(backfilled):
    world, _, _ = backfilled
    outbox = world.rows(_OUTBOX)
    instances = world.rows(_INSTANCES)
    before = world.requests()
    rerun = world.daily(at(11))
    again = world.daily(at(8))
    assert world.requests() == before
    assert world.rows(_OUTBOX) == outbox and world.rows(_INSTANCES) == instances
    assert all(j.transitions == 0 for j in rerun.journeys + again.journeys)
    second = world.backfill(start=day(8), end=day(11), dry_run=False)
    assert second.runs == () and second.already_run == (at(8), at(9), at(10), at(11))
    assert world.requests() == before and world.rows(_OUTBOX) == outbox


def test_a_live_backfill_refuses_days_behind_the_latest_live_run(backfilled):
    world, _, _ = backfilled
    runs = len(world.rows(_RUNS))
    with pytest.raises(BackfillRefused, match="rewind"):
        world.backfill(start=day(6), end=day(7), dry_run=False)
    with pytest.raises(BackfillRefused, match="present"):
        world.backfill(start=date.today(), end=date.today() + timedelta(days=1), dry_run=False)
    assert len(world.rows(_RUNS)) == runs


# Rebuild -------------------------------------------------------------------------------------------------------


def test_a_rebuild_after_late_data_changes_only_the_day_it_arrived_for(make_world):
    world = make_world("rebuild", [8, 9, 10])
    outbox, instances = world.rows(_OUTBOX), world.rows(_INSTANCES)
    sizes = {as_of: _sizes(world, as_of) for as_of in (at(8), at(9), at(10))}
    user = _late_cart_user(world, at(9))
    # Arrives with day 9's files; happened just inside day 9's 7-day window and just outside day 10's.
    late = pl.DataFrame(
        {"user_id": [user], "event": ["add_to_cart"], "ts": [at(9) - timedelta(days=7) + timedelta(hours=6)]},
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    ).with_columns(pl.lit(None, pl.Float64).alias("value"), pl.lit(None, pl.String).alias("properties"))
    late.write_parquet(world.snapshot / "events" / f"date={day(9)}" / "late-0.parquet")
    before = world.requests()

    report = world.backfill(start=day(8), end=day(11), dry_run=False, rebuild=True)

    assert [d.as_of for d in report.days] == [at(8), at(9), at(10)] and report.not_run == (at(11),)
    assert {d.as_of: d.changed() for d in report.days if d.changed()} == {
        at(9): {"cart_abandoners": (sizes[at(9)]["cart_abandoners"], sizes[at(9)]["cart_abandoners"] + 1)}
    }
    assert _sizes(world, at(8)) == sizes[at(8)] and _sizes(world, at(10)) == sizes[at(10)]
    assert _sizes(world, at(9)) == {**sizes[at(9)], "cart_abandoners": sizes[at(9)]["cart_abandoners"] + 1}
    members = MembershipStore(world.home / "store" / "segments").read("cart_abandoners", at(9))
    assert user in members.to_list()
    assert world.rows(_OUTBOX) == outbox and world.rows(_INSTANCES) == instances, "journeys are not touched"
    assert world.requests() == before


# Workspace reuse -----------------------------------------------------------------------------------------------


def test_a_workspace_is_reused_only_over_the_same_history_inputs_and_definitions():
    held = WorkspaceState("defs", (ComputedDay(at(8), "a"), ComputedDay(at(9), "b")))
    longer = (ComputedDay(at(8), "a"), ComputedDay(at(9), "b"), ComputedDay(at(10), "c"))
    assert reusable_days(held, "defs", longer) == 2, "continue after what is there"
    assert reusable_days(held, "defs", longer[:1]) == 1, "everything asked for is there"
    assert reusable_days(held, "edited", longer) == 0
    assert reusable_days(held, "defs", (ComputedDay(at(8), "a"), ComputedDay(at(9), "late file"))) == 0
    assert reusable_days(held, "defs", (ComputedDay(at(7), "z"), *longer)) == 0, "a longer history starts over"
    assert reusable_days(None, "defs", longer) == 0


def test_input_fingerprints_change_from_the_day_a_file_arrived_for(tmp_path):
    write(tmp_path, f"events/date={day(1)}/part-0.csv", "user_id,event,ts\nu1,app_open,2026-09-02T01:00:00Z\n")
    write(tmp_path, "users/users.csv", "user_id\nu1\n")
    days = [day(0), day(1), day(2)]
    before = input_fingerprints(tmp_path, days)
    write(tmp_path, f"events/date={day(2)}/late-0.csv", "user_id,event,ts\nu1,purchase,2026-09-02T02:00:00Z\n")
    write(tmp_path, "events/.hidden.tmp", "ignored, as ingestion ignores it")
    after = input_fingerprints(tmp_path, days)
    assert [before[d] == after[d] for d in days] == [True, True, False]
    assert before[day(0)] != before[day(1)], "a day sees the files that had arrived by then"


# Helpers -------------------------------------------------------------------------------------------------------

_OUTBOX = OutboxMessage.__table__
_RUNS = Run.__table__
_INSTANCES = JourneyInstance.__table__
_TRANSITIONS = JourneyTransition.__table__
_SIZES = SegmentSize.__table__
_LIVE_TABLES = (_OUTBOX, _RUNS, _INSTANCES, _TRANSITIONS, _SIZES)


def _tree_digest(root: Path, *, skip: str) -> dict[str, str]:
    """Content hash of every file under root except the `skip` folder (and SQLite's own journal files)."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
        and path.relative_to(root).parts[0] not in (skip, "fakes")
        and not path.name.startswith("nudge.db")
    }


def _sizes(world: World, as_of: datetime) -> dict[str, int]:
    return {row["segment"]: row["size"] for row in world.rows(_SIZES, _SIZES.c.as_of == as_of)}


def _late_cart_user(world: World, as_of: datetime) -> str:
    """A user outside cart_abandoners at as_of with no purchase in its window: one late cart brings them in."""
    members = set(MembershipStore(world.home / "store" / "segments").read("cart_abandoners", as_of).to_list())
    events = pl.read_parquet(world.snapshot / "events" / "*" / "*.parquet")
    bought = set(
        events.filter(
            (pl.col("event") == "purchase") & (pl.col("ts") >= as_of - timedelta(days=8)) & (pl.col("ts") < as_of)
        ).get_column("user_id")
    )
    users = pl.read_parquet(world.snapshot / "users" / "users.parquet")
    settled = users.filter(pl.col("signed_up_at") < as_of - timedelta(days=8)).get_column("user_id").sort()
    return next(user for user in settled if user not in members and user not in bought)
