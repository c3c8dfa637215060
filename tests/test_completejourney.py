"""The Complete Journey converter on the real shared data, checked against the data README's numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from engine.contract import EVENT_SCHEMA
from engine.ingest import load_users
from engine.sample import ConvertReport, convert_completejourney

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "completejourney"

pytestmark = pytest.mark.skipif(
    not (SOURCE / "transactions.parquet").exists(),
    reason="shared/data/completejourney is not beside the repository",
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[ConvertReport, pl.DataFrame]:
    out = tmp_path_factory.mktemp("completejourney")
    report = convert_completejourney(SOURCE, out)
    events = pl.read_parquet(out / "events" / "*" / "*.parquet", hive_partitioning=True)
    return report, events


def test_counts_match_the_source(converted: tuple[ConvertReport, pl.DataFrame]) -> None:
    report, events = converted
    assert (report.users, report.purchases, report.campaign_received, report.coupon_redeemed) == (
        2_469,
        155_848,
        6_589,
        2_102,
    )
    assert dict(events["event"].value_counts().rows()) == {
        "purchase": 155_848,
        "campaign_received": 6_589,
        "coupon_redeemed": 2_102,
    }
    assert (report.nonpositive_baskets, report.baskets_after_2017) == (478, 86)
    assert events.drop("date").schema == pl.Schema(
        [(name, dtype) for name, dtype in EVENT_SCHEMA.items() if name != "load_date"]
    )
    assert (events["date"] == events["ts"].dt.date()).all()


def test_reference_segments_recompute_from_events(converted: tuple[ConvertReport, pl.DataFrame]) -> None:
    _, events = converted
    baskets = events.filter(pl.col("event") == "purchase")
    per_household = baskets.group_by("user_id").len()
    assert per_household.height == 2_469
    assert per_household.filter(pl.col("len") == 1).height == 31
    december = baskets.filter(
        pl.col("ts").is_between(datetime(2017, 12, 2, tzinfo=UTC), datetime(2018, 1, 1, tzinfo=UTC), closed="left")
    )
    assert december.group_by("user_id").len().filter(pl.col("len") >= 3).height == 1_451
    received_8 = events.filter(
        pl.col("event") == "campaign_received", pl.col("properties").str.json_path_match("$.campaign_id") == "8"
    )
    assert received_8.height == 1_076


def test_users_load_through_the_contract(converted: tuple[ConvertReport, pl.DataFrame]) -> None:
    report, events = converted
    load = load_users(report.out_dir, as_of=datetime(2018, 1, 2, tzinfo=UTC))
    assert (load.users.height, load.quarantined, load.duplicates, load.warnings) == (2_469, {}, 0, {})
    user = load.users.filter(pl.col("user_id") == "1").row(0, named=True)
    assert user["email"] == "household-1@example.com" and user["email_consent"] and user["push_tokens"] == []
    assert (user["timezone"], user["age"]) == ("UTC", "65+")
    first = events.filter(pl.col("event") == "purchase", pl.col("user_id") == "1")["ts"].min()
    assert user["signed_up_at"] == first
