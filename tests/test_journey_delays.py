"""Delays timed by the user: the next local time of day (DST-correct), and a date attribute plus an offset."""

from datetime import UTC, date, datetime, time, timedelta

import polars as pl
import pytest

from engine.journey_clock import next_wall_time
from tests.journey_harness import T0, Runner, journey

D = timedelta(days=1)


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.mark.parametrize(
    ("after", "zone", "wall", "expected"),
    [
        (utc(2026, 9, 10, 6), "America/New_York", time(9), utc(2026, 9, 10, 13)),  # 02:00 EDT: today
        (utc(2026, 9, 10, 6), "Asia/Tokyo", time(9), utc(2026, 9, 11, 0)),  # 15:00 JST: tomorrow
        (utc(2026, 9, 10, 6), "Asia/Kolkata", time(9), utc(2026, 9, 10, 3, 30) + D),  # 11:30 IST, +05:30
        (utc(2026, 9, 10, 9), "UTC", time(9), utc(2026, 9, 11, 9)),  # at 09:00 sharp: the next one
        # New York springs forward on 2026-03-08: 02:00 EST becomes 03:00 EDT, so 02:30 never shows.
        (utc(2026, 3, 8, 5), "America/New_York", time(2, 30), utc(2026, 3, 8, 7)),  # the end of the skip
        (utc(2026, 3, 8, 5), "America/New_York", time(9), utc(2026, 3, 8, 13)),  # 09:00 EDT, not EST
        # It falls back on 2026-11-01: 01:30 shows twice (EDT, then EST).
        (utc(2026, 11, 1, 4), "America/New_York", time(1, 30), utc(2026, 11, 1, 5, 30)),  # the first showing
        (utc(2026, 11, 1, 5, 45), "America/New_York", time(1, 30), utc(2026, 11, 2, 6, 30)),  # once a day
        (utc(2026, 11, 1, 4), "America/New_York", time(9), utc(2026, 11, 1, 14)),  # 09:00 EST
        (utc(2026, 9, 10, 6), "Not/A_Zone", time(9), utc(2026, 9, 10, 9)),  # unknown: UTC
    ],
)
def test_next_local_time_of_day(after: datetime, zone: str, wall: time, expected: datetime):
    assert next_wall_time(after, zone, wall) == expected


MORNING = """
name: morning
entry: {segment: s}
start: nine
nodes:
  nine: {delay: {until_local_time: "09:00"}, next: mail}
  mail: {send: {channel: email, template: cart_reminder}, next: done}
  done: {exit: completed}
"""


def test_a_local_time_delay_reads_each_users_time_zone_with_utc_as_fallback():
    users = pl.LazyFrame(
        {"user_id": ["ny", "tokyo", "none", "bad"], "timezone": ["America/New_York", "Asia/Tokyo", None, "Mars/Base"]}
    )
    runner = Runner(journey(MORNING), users=users)
    runner.run(T0, entered=["ny", "tokyo", "none", "bad"])
    dues = dict(runner.state.select("user_id", "due_at").iter_rows())
    assert dues == {
        "ny": utc(2026, 9, 10, 13),
        "tokyo": utc(2026, 9, 11, 0),
        "none": utc(2026, 9, 10, 9),
        "bad": utc(2026, 9, 10, 9),
    }
    runner.run(utc(2026, 9, 10, 12))
    assert runner.sends == [
        ("bad", "email", "cart_reminder", utc(2026, 9, 10, 12)),
        ("none", "email", "cart_reminder", utc(2026, 9, 10, 12)),
    ]
    runner.run(utc(2026, 9, 11, 6))
    assert sorted(user for user, *_ in runner.sends) == ["bad", "none", "ny", "tokyo"]
    assert runner.reasons("ny")[1] == "waited until 09:00 local time"


def test_without_a_time_zone_column_everyone_is_on_utc():
    runner = Runner(journey(MORNING))
    runner.run(T0, entered=["a"])
    assert runner.latest("a")["due_at"] == utc(2026, 9, 10, 9)


RENEWAL = """
name: renewal
entry: {segment: s}
start: before_renewal
nodes:
  before_renewal: {delay: {until_attribute: renews_at, offset: -3d}, next: mail}
  mail: {send: {channel: email, template: cart_reminder}, next: done}
  done: {exit: completed}
"""


def test_a_date_attribute_delay_waits_until_the_date_plus_offset_and_not_at_all_when_passed_or_missing():
    renews = [T0 + 5 * D, T0 + D, None]
    users = pl.LazyFrame({"user_id": ["later", "soon", "never"], "renews_at": renews})
    runner = Runner(journey(RENEWAL), users=users)
    runner.run(T0, entered=["later", "soon", "never"])
    assert runner.where("later") == ("before_renewal", "active")
    assert runner.latest("later")["due_at"] == T0 + 2 * D
    assert runner.reasons("soon")[1] == "did not wait: renews_at - 3d had passed"
    assert runner.reasons("never")[1] == "did not wait: no renews_at"
    assert sorted(user for user, *_ in runner.sends) == ["never", "soon"]
    runner.run(T0 + 2 * D)
    assert runner.where("later") == ("done", "exited")
    assert runner.reasons("later")[1] == "waited until renews_at - 3d"


def test_a_date_typed_attribute_means_its_midnight_utc_and_an_absent_column_waits_for_nobody():
    dated = Runner(journey(RENEWAL), users=pl.LazyFrame({"user_id": ["a"], "renews_at": [date(2026, 9, 20)]}))
    dated.run(T0, entered=["a"])
    assert dated.latest("a")["due_at"] == utc(2026, 9, 17)
    absent = Runner(journey(RENEWAL))
    absent.run(T0, entered=["a"])
    assert absent.where("a") == ("done", "exited")


def test_a_text_attribute_cannot_time_a_delay():
    runner = Runner(journey(RENEWAL), users=pl.LazyFrame({"user_id": ["a"], "renews_at": ["2026-09-20"]}))
    with pytest.raises(TypeError, match="renews_at"):
        runner.run(T0, entered=["a"])
