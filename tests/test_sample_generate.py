"""The seeded sample generator: byte-identical for a seed, realistic in shape, loadable by the contract."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from engine.ingest import ingest_events, load_users, scan_events
from engine.sample import generate
from engine.sample.__main__ import main
from engine.sample.writers import SampleFormat

START = date(2026, 9, 1)


def tree(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("fmt", ["parquet", "csv", "ndjson"])
def test_same_seed_gives_identical_bytes(tmp_path: Path, fmt: SampleFormat) -> None:
    for name in ("a", "b"):
        generate(tmp_path / name, users=300, days=3, seed=3, fmt=fmt)
    first = tree(tmp_path / "a")
    assert f"users/users.{fmt}" in first
    assert f"events/date=2026-09-01/part-0.{fmt}" in first
    assert tree(tmp_path / "b") == first


def test_another_seed_gives_other_data(tmp_path: Path) -> None:
    for name, seed in [("a", 3), ("b", 4)]:
        generate(tmp_path / name, users=300, days=3, seed=seed)
    first, second = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert first.keys() == second.keys()
    assert all(first[name] != second[name] for name in first)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    report = generate(out, users=3_000, days=5, start=START, seed=11)
    assert report.events == sum(report.events_by_type.values()) > 10_000
    return out


def test_events_belong_to_users_and_stay_in_the_period(sample: Path) -> None:
    users = pl.read_parquet(sample / "users" / "users.parquet")
    events = pl.read_parquet(sample / "events" / "*" / "*.parquet", hive_partitioning=True)
    assert events.join(users, on="user_id", how="anti").height == 0
    assert events["ts"].min() >= datetime(2026, 9, 1, tzinfo=UTC)
    assert events["ts"].max() < datetime(2026, 9, 6, tzinfo=UTC)
    lag = events.select((pl.col("date") - pl.col("ts").dt.date()).dt.total_days().alias("lag"))["lag"]
    assert set(lag.unique()) == {0, 1}
    assert 0.005 < lag.mean() < 0.02  # ~1% arrive a day late
    assert set(events["event"].unique()) == {
        "sign_up", "app_open", "view_item", "add_to_cart", "purchase", "push_open", "email_click",
    }  # fmt: skip
    purchases = events.filter(pl.col("event") == "purchase")
    assert purchases["value"].null_count() == 0 and purchases["value"].min() > 0
    assert events.filter(pl.col("event") != "purchase")["value"].null_count() == events.height - purchases.height


def test_signups_open_the_app_and_behave_in_local_daytime(sample: Path) -> None:
    users = pl.read_parquet(sample / "users" / "users.parquet")
    events = pl.read_parquet(sample / "events" / "*" / "*.parquet", hive_partitioning=False)
    signups = events.filter(pl.col("event") == "sign_up").join(users, on="user_id")
    assert (signups["ts"] == signups["signed_up_at"]).all()
    first_open = (
        events.filter(pl.col("event") == "app_open")
        .group_by("user_id")
        .agg(pl.col("ts").min().alias("open"))
        .join(signups, on="user_id")
    )
    assert first_open.height == signups.height
    assert ((first_open["open"] - first_open["ts"]) < timedelta(minutes=3)).all()
    opens = events.filter(pl.col("event") == "app_open").join(users.select("user_id", "timezone"), on="user_id")
    local_hours = [
        opens.filter(pl.col("timezone") == zone)["ts"].dt.convert_time_zone(zone).dt.hour()
        for zone in opens["timezone"].unique()
    ]
    hours = pl.concat(local_hours)
    assert hours.is_between(2, 5).mean() < 0.05 < hours.is_between(18, 22).mean()


def test_population_has_many_zones_and_realistic_reach(sample: Path) -> None:
    users = pl.read_parquet(sample / "users" / "users.parquet")
    assert users.height == 3_000 and users["user_id"].is_unique().all()
    assert users["timezone"].n_unique() >= 40
    assert (
        users.select((pl.col("country") == "US") == pl.col("timezone").str.starts_with("America/")).to_series().mean()
        > 0.8
    )
    assert 0.82 < users["email"].is_not_null().mean() < 0.88
    assert 0.56 < (users["push_tokens"].list.len() > 0).mean() < 0.64
    assert users["push_tokens"].list.len().max() == 2
    assert (
        users.filter(pl.col("push_tokens").list.len() > 0)["push_tokens"]
        .list.first()
        .str.contains(r"^[A-Za-z0-9_-]{22}:APA91b[A-Za-z0-9_-]{134}$")
        .all()
    )
    assert users.filter(pl.col("email").is_null())["email_consent"].any() is False
    assert 0 < users["push_consent"].mean() < users["push_tokens"].list.len().gt(0).mean()
    assert {"plan", "app_version", "platform"} <= set(users.columns)


def test_sample_loads_through_the_contract_without_quarantine(sample: Path, tmp_path: Path) -> None:
    report = ingest_events(sample, store_dir=tmp_path, through=date(2026, 9, 30))
    assert report.rows_quarantined == 0 and all(f.properties_canonical for f in report.files)
    loaded = scan_events(tmp_path, as_of=datetime(2026, 10, 1, tzinfo=UTC)).collect()
    assert loaded.height == report.rows_read
    users = load_users(sample, as_of=datetime(2026, 10, 1, tzinfo=UTC))
    assert (users.users.height, users.warnings, users.duplicates) == (3_000, {}, 0)


def test_command_line_generates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["generate", "--out", str(tmp_path), "--users", "50", "--days", "2", "--format", "csv"])
    assert (tmp_path / "users" / "users.csv").exists()
    assert (tmp_path / "events" / "date=2026-09-02" / "part-0.csv").exists()
    assert "events of 50 users" in capsys.readouterr().out
    with pytest.raises(FileExistsError):
        main(["generate", "--out", str(tmp_path), "--users", "50", "--days", "2"])
