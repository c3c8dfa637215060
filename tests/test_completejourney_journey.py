"""A campaign journey over the Complete Journey data, counted against plain Polars over the raw tables.

The journey enters a household when it receives campaign 8 (one instance per household and campaign, keyed by
`campaign_id`) and waits for a coupon redemption of that same campaign until the campaign ends, leaving by
`redeemed` or `not_redeemed`. It is simulated (`engine.simulate`: ingest, journey run, outbox, all in a
throwaway home) once a day at 06:00 UTC over the converted snapshot, from the day before the campaign starts to
the day after it ends. The reference never touches the converted events or engine code: it joins the raw
`campaigns`, `campaign_descriptions` and `coupon_redemptions` tables.

Why campaign 8 alone: a wait's timeout is one duration for every instance, so "until the campaign ends" can be
written for one campaign (timeout = the campaign's days, both ends counted) but not for all 27 at once, whose
lengths differ.

Day-level rule. Redemptions carry a date only; the converter puts a campaign start at 00:00 of start_date and a
redemption at the last microsecond of its day. An instance enters at the first run after the receipt
(start_date 06:00) and its wait counts events strictly after that arrival and before arrival + (end_date -
start_date + 1) days (the day after end_date, 06:00). So every redemption dated start_date .. end_date counts,
which is the data README's rule (158: start and end days inclusive), and the reference is that rule. A
redemption is seen by the run of the day after it; a household that never redeems times out on the day after
end_date.
"""

from dataclasses import dataclass
from datetime import date, time, timedelta
from pathlib import Path

import polars as pl
import pytest

from engine.sample import convert_completejourney
from engine.settings import EngineSettings
from engine.simulate import SimulationReport, simulate

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "completejourney"
CAMPAIGN = 8
RUN_AT = time(6)

pytestmark = [
    pytest.mark.skipif(
        not (SOURCE / "transactions.parquet").exists(),
        reason="shared/data/completejourney is not beside the repository",
    ),
    pytest.mark.slow,
]

JOURNEY = """\
name: campaign_{campaign}_redemption
description: A household that received campaign {campaign}, until it redeems one of its coupons or the campaign ends.
status: draft
entry:
  event: campaign_received
  where: {{campaign_id: {campaign}}}
  key: campaign_id
start: wait_for_redemption
nodes:
  wait_for_redemption:
    wait_for: {{event: coupon_redeemed, match_key: true}}
    timeout: {days}d
    matched: redeemed
    timed_out: not_redeemed
  redeemed:
    exit: redeemed
  not_redeemed:
    exit: not_redeemed
"""


@dataclass(frozen=True)
class Campaign:
    start: date
    end: date

    @property
    def days(self) -> int:
        """The campaign's length with both its start and end days counted."""
        return (self.end - self.start).days + 1


def campaign_dates(source: Path, campaign: int) -> Campaign:
    rows = pl.read_parquet(source / "campaign_descriptions.parquet").filter(pl.col("campaign_id") == campaign)
    row = rows.row(0, named=True)
    return Campaign(start=row["start_date"].date(), end=row["end_date"].date())


def reference(source: Path, campaign: int) -> pl.DataFrame:
    """Per household that received the campaign, the day of its first redemption of that campaign's coupons
    between start_date and end_date inclusive (the data README's rule); null where there is none."""
    received = pl.scan_parquet(source / "campaigns.parquet").filter(pl.col("campaign_id") == campaign)
    descriptions = pl.scan_parquet(source / "campaign_descriptions.parquet")
    redemptions = pl.scan_parquet(source / "coupon_redemptions.parquet").select(
        "household_id", "campaign_id", pl.col("redemption_date").dt.date().alias("day")
    )
    within = pl.col("day").is_between(pl.col("start_date").dt.date(), pl.col("end_date").dt.date())
    return (
        received.join(descriptions, on="campaign_id")
        .join(redemptions, on=["household_id", "campaign_id"], how="left")
        .group_by("household_id")
        .agg(pl.col("day").filter(within).min().alias("first_in_campaign"))
        .select(pl.col("household_id").cast(pl.String).alias("user_id"), pl.exclude("household_id"))
        .sort("user_id")
        .collect()
    )


@pytest.fixture(scope="module")
def expected() -> pl.DataFrame:
    return reference(SOURCE, CAMPAIGN)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> SimulationReport:
    folder = tmp_path_factory.mktemp("completejourney_journey")
    convert_completejourney(SOURCE, folder / "snapshot")
    campaign = campaign_dates(SOURCE, CAMPAIGN)
    name = f"campaign_{CAMPAIGN}_redemption"
    journeys = folder / "definitions" / "journeys"
    journeys.mkdir(parents=True)
    (journeys / f"{name}.yaml").write_text(JOURNEY.format(campaign=CAMPAIGN, days=campaign.days))
    settings = EngineSettings(
        home=folder / "home", snapshot_dir=folder / "snapshot", definitions_dir=folder / "definitions"
    )
    first, last = campaign.start - timedelta(days=1), campaign.end + timedelta(days=1)
    return simulate(name, first, last, settings=settings, at=RUN_AT)


def exits(report: SimulationReport) -> pl.DataFrame:
    """Per instance that left: its household, the exit node and the day of the run that took it there."""
    return report.transitions.filter(pl.col("to_node").is_in(["redeemed", "not_redeemed"])).select(
        "user_id",
        pl.col("to_node").alias("exit"),
        pl.col("at").dt.date().alias("day"),
        pl.col("at").dt.time().alias("time"),
    )


def test_the_reference_reproduces_the_data_readme(expected: pl.DataFrame) -> None:
    assert expected.height == 1_076
    assert expected.get_column("first_in_campaign").count() == 158


def test_entered_matched_and_timed_out_equal_the_raw_tables(
    simulated: SimulationReport, expected: pl.DataFrame
) -> None:
    campaign = campaign_dates(SOURCE, CAMPAIGN)
    redeemed = expected.filter(pl.col("first_in_campaign").is_not_null())
    assert simulated.entries == expected.height == 1_076
    assert simulated.entries_per_day == {
        day: (expected.height if day == campaign.start else 0) for day in simulated.entries_per_day
    }
    left = exits(simulated)
    counts = dict(left.group_by("exit").len().iter_rows())
    assert counts == {"redeemed": redeemed.height, "not_redeemed": expected.height - redeemed.height}
    assert left.get_column("user_id").sort().to_list() == expected.get_column("user_id").to_list()
    assert set(left.get_column("time")) == {RUN_AT}


def test_each_household_leaves_on_the_day_the_raw_tables_say(
    simulated: SimulationReport, expected: pl.DataFrame
) -> None:
    """A redemption (the last microsecond of its day) is seen by the next day's 06:00 run, one on end_date too;
    the rest time out at 06:00 the day after end_date."""
    campaign = campaign_dates(SOURCE, CAMPAIGN)
    by_reference = expected.select(
        "user_id",
        pl.when(pl.col("first_in_campaign").is_not_null())
        .then(pl.lit("redeemed"))
        .otherwise(pl.lit("not_redeemed"))
        .alias("exit"),
        (pl.col("first_in_campaign").fill_null(campaign.end) + timedelta(days=1)).alias("day"),
    )
    assert exits(simulated).select("user_id", "exit", "day").sort("user_id").equals(by_reference)


def test_nothing_is_left_waiting_after_the_campaign(simulated: SimulationReport) -> None:
    last = simulated.node_counts.filter(pl.col("as_of") == simulated.as_ofs[-1])
    assert set(last.get_column("status")) == {"exited"}
    assert last.get_column("instances").sum() == simulated.entries


def test_matched_equals_the_readme_rule_start_day_included(simulated: SimulationReport, expected: pl.DataFrame) -> None:
    matched = exits(simulated).filter(pl.col("exit") == "redeemed").height
    assert matched == expected.get_column("first_in_campaign").count() == 158
