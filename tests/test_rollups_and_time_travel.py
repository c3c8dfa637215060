"""Rollups fold only new arrivals, late events count for the days they happened, and past days replay exactly."""

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from engine.behaviour import Behaviour
from engine.ingest import ingest_events, scan_events
from engine.rollups import scan_rollups, update_rollups
from engine.segments import compute_memberships
from engine.settings import REPO_ROOT
from models.segments import SegmentDefinition

DAY1 = date(2026, 9, 1)


def write_day(snapshot: Path, arrived: date, rows: list[tuple[str, str, datetime]]) -> None:
    folder = snapshot / "events" / f"date={arrived.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(
        {"user_id": [r[0] for r in rows], "event": [r[1] for r in rows], "ts": [r[2] for r in rows]},
        schema={"user_id": pl.String, "event": pl.String, "ts": pl.Datetime("us", "UTC")},
    ).write_parquet(folder / "part-0.parquet")


def at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def behaviour(store: Path, as_of: datetime) -> Behaviour:
    return Behaviour(as_of, scan_events(store, as_of=as_of), scan_rollups(store, through_day=as_of.date()))


LOYALISTS = {
    "loyalists": SegmentDefinition.model_validate(
        {"name": "loyalists", "rule": {"performed": {"event": "purchase", "within": {"last": "7d"}, "at_least": 2}}}
    )
}
USERS = pl.LazyFrame({"user_id": ["a", "b", "c"]})


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    for offset in range(5):
        day = DAY1 + timedelta(days=offset)
        write_day(tmp_path / "snapshot", day, [("a", "purchase", at(day, 10)), ("b", "view_item", at(day, 11))])
    return tmp_path / "snapshot"


def test_only_new_arrivals_are_folded(snapshot: Path, tmp_path: Path):
    store = tmp_path / "store"
    ingest_events(snapshot, store_dir=store, through=DAY1 + timedelta(days=4))
    assert len(update_rollups(store)) == 5
    assert update_rollups(store) == [], "nothing new: nothing folded"
    sixth = DAY1 + timedelta(days=5)
    write_day(snapshot, sixth, [("c", "purchase", at(DAY1 + timedelta(days=2), 9))])  # late: happened on day 3
    ingest_events(snapshot, store_dir=store, through=sixth)
    assert update_rollups(store) == [sixth]


def test_late_events_count_for_the_day_they_happened_once_they_arrived(snapshot: Path, tmp_path: Path):
    store = tmp_path / "store"
    day3, day6 = DAY1 + timedelta(days=2), DAY1 + timedelta(days=5)
    write_day(snapshot, day6, [("c", "purchase", at(day3, 9)), ("c", "purchase", at(day3, 12))])
    ingest_events(snapshot, store_dir=store, through=day6)
    update_rollups(store)

    before_arrival = compute_memberships(LOYALISTS, USERS, behaviour(store, at(day6 - timedelta(days=1), 6)))
    after_arrival = compute_memberships(LOYALISTS, USERS, behaviour(store, at(day6, 6)))

    assert before_arrival["loyalists"].to_list() == ["a"], "the late purchases had not arrived yet"
    assert after_arrival["loyalists"].to_list() == ["a", "c"]


def test_replaying_a_past_day_after_more_data_arrived_gives_that_day_s_answer(snapshot: Path, tmp_path: Path):
    store = tmp_path / "store"
    day3, day6 = DAY1 + timedelta(days=2), DAY1 + timedelta(days=5)
    ingest_events(snapshot, store_dir=store, through=day3)
    update_rollups(store)
    as_of = at(day3, 6)
    then = compute_memberships(LOYALISTS, USERS, behaviour(store, as_of))

    write_day(snapshot, day6, [("b", "purchase", at(day3, 1)), ("b", "purchase", at(day3, 2))])  # late for day 3
    ingest_events(snapshot, store_dir=store, through=day6)
    update_rollups(store)
    replayed = compute_memberships(LOYALISTS, USERS, behaviour(store, as_of))

    assert replayed["loyalists"].to_list() == then["loyalists"].to_list()


def test_shipped_segments_replay_identically(tmp_path: Path):
    """The real definitions over generated data: a replay of a day equals the day's own result, bit for bit."""
    from engine.definitions import load_definitions
    from engine.render import TemplateStore
    from engine.sample.generate import generate

    definitions = load_definitions(REPO_ROOT / "definitions", TemplateStore(REPO_ROOT / "templates"))
    generate(tmp_path / "snapshot", users=300, days=14, start=DAY1, seed=5)
    users = pl.read_parquet(tmp_path / "snapshot" / "users" / "users.parquet").lazy()
    store = tmp_path / "store"
    as_of = at(DAY1 + timedelta(days=9), 6)
    ingest_events(tmp_path / "snapshot", store_dir=store, through=as_of.date())
    update_rollups(store)
    then = compute_memberships(definitions.segments, users, behaviour(store, as_of))
    ingest_events(tmp_path / "snapshot", store_dir=store, through=DAY1 + timedelta(days=13))
    update_rollups(store)
    replayed = compute_memberships(definitions.segments, users, behaviour(store, as_of))
    assert {k: v.to_list() for k, v in replayed.items()} == {k: v.to_list() for k, v in then.items()}
    assert sum(len(v) for v in then.values()) > 0
