"""The data README's reference segment sizes for the Complete Journey, recomputed from rule definitions.

Each reference definition is written as a segment in YAML and computed by the engine over the converted data
(`convert_completejourney`), so the numbers check the rule language on real, irregular data, not only against
our own reference evaluator. Boundary conventions, as the README states them:

- The run is as of 2018-01-02 00:00, after every basket: the README counts all 155,848 baskets, including the
  86 of 2018-01-01, so "last basket before 2017-12-02" (418) treats a household whose only recent basket is
  on 2018-01-01 as recent.
- "[2017-12-02 00:00, 2018-01-01 00:00)" is a `between` window, which is half-open like every window.
- "No second basket in (first, first + 30 days]" is open at the start and closed at the end: a window
  `{after_first: purchase, for: 30d, closed: right}` with nothing in it. "At most one basket in [first,
  first + 30d)" reads the same on this data only by luck (the one household with two baskets at its first
  time also has a third soon after, and no basket falls exactly 30 days after a first); the property test
  holds the open and closed ends to the reference.
- Redemptions carry a date only (the converter puts them at the day's last microsecond), so "between
  start_date and end_date inclusive" for campaign 8 (2017-05-08 to 2017-06-25) is [2017-05-08, 2017-06-26):
  exact for any time on the last day.
"""

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
import yaml

from engine.behaviour import Behaviour
from engine.rollups import rollup_events
from engine.sample import convert_completejourney
from engine.segments import compute_memberships
from models.segments import SegmentDefinition

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "completejourney"
AS_OF = datetime(2018, 1, 2, tzinfo=UTC)

pytestmark = pytest.mark.skipif(
    not (SOURCE / "transactions.parquet").exists(),
    reason="shared/data/completejourney is not beside the repository",
)

SEGMENTS = """
all_households:
  performed: {event: purchase}
december_regulars:
  performed: {event: purchase, within: {between: {from: 2017-12-02, to: 2018-01-01}}, at_least: 3}
lapsed_before_december:
  last_performed: {event: purchase, before: 2017-12-02}
one_and_done:
  performed: {event: purchase, exactly: 1}
no_second_within_30_days:
  not_performed: {event: purchase, within: {after_first: purchase, for: 30d, closed: right}}
received_campaign_8:
  performed: {event: campaign_received, where: {campaign_id: 8}}
redeemed_campaign_8_in_time:
  all:
    - segment: received_campaign_8
    - performed:
        event: coupon_redeemed
        where: {campaign_id: 8}
        within: {between: {from: 2017-05-08, to: 2017-06-26}}
"""
REFERENCE_SIZES = {
    "all_households": 2_469,
    "december_regulars": 1_451,
    "lapsed_before_december": 418,
    "one_and_done": 31,
    "no_second_within_30_days": 348,
    "received_campaign_8": 1_076,
    "redeemed_campaign_8_in_time": 158,
}


@pytest.fixture(scope="module")
def memberships(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.Series]:
    out = tmp_path_factory.mktemp("completejourney")
    convert_completejourney(SOURCE, out)
    events = pl.scan_parquet(out / "events" / "*" / "*.parquet", hive_partitioning=True).rename({"date": "load_date"})
    arrived = pl.col("load_date") <= AS_OF.date()
    behaviour = Behaviour(
        as_of=AS_OF,
        events=events.filter(arrived & (pl.col("ts") < AS_OF)),
        rollups=rollup_events(events).filter(arrived & (pl.col("day") < AS_OF.date())).collect().lazy(),
    )
    definitions = {
        name: SegmentDefinition.model_validate({"name": name, "rule": rule})
        for name, rule in yaml.safe_load(SEGMENTS).items()
    }
    return compute_memberships(definitions, pl.scan_parquet(out / "users" / "users.parquet"), behaviour)


def test_reference_segment_sizes(memberships: dict[str, pl.Series]) -> None:
    assert {name: members.len() for name, members in memberships.items()} == REFERENCE_SIZES
