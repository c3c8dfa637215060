"""What one benchmark run works on: how many users and days, which instants, and where its files live.

The generator is driven by users and days, not by an event count, so the requested count is turned into a
number of days with a linear model measured on the generator (per user: ~0.94 events per active-period day plus
~1.5 once, the signup burst; checked at 20k users x 45 days and 1M users x 3 days). The real count is reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache"
REPO_ROOT = BENCH_DIR.parent

START = date(2026, 9, 1)
AS_OF_TIME = time(6)
"""Not midnight: windows then cut days in two, so the raw-event edges of every window are exercised."""
EVENTS_PER_USER_DAY = 0.94
EVENTS_PER_USER_ONCE = 1.5
MIN_DAYS = 3
_SUFFIXES = {"": 1, "k": 1_000, "m": 1_000_000}


@dataclass(frozen=True)
class Workload:
    """One data set and the two instants measured on it.

    `days` days of history are ingested into the base store, the last of them being as_of's day (visible up to
    06:00); one more day is generated but only ingested by the incremental phase, which then runs at
    `next_as_of`, one day later.
    """

    events: int
    users: int
    days: int
    seed: int

    @property
    def generated_days(self) -> int:
        """History plus the incremental day."""
        return self.days + 1

    @property
    def as_of(self) -> datetime:
        return datetime.combine(START + timedelta(days=self.days - 1), AS_OF_TIME, tzinfo=UTC)

    @property
    def next_as_of(self) -> datetime:
        return self.as_of + timedelta(days=1)

    @property
    def folder(self) -> Path:
        """The cache folder, named for everything that shapes the data so two workloads never share one."""
        return CACHE_DIR / f"events-{self.events}-users-{self.users}-days-{self.days}-seed-{self.seed}"

    @property
    def snapshot_dir(self) -> Path:
        return self.folder / "snapshot"

    @property
    def store_dir(self) -> Path:
        """The base store, ingested through as_of's day and never written again after preparation."""
        return self.folder / "store"

    @property
    def users_file(self) -> Path:
        """The normalized users table (`load_users` output) that both engines read."""
        return self.folder / "users.parquet"

    @property
    def run_dir(self) -> Path:
        """Per-run scratch: memberships to compare, the incremental store clone, DuckDB's spill folder."""
        return self.folder / "run"


def parse_count(text: str) -> int:
    """`1M`, `10m`, `500k` or `250000` as an integer."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if match is None:
        raise ValueError(f"expected a count such as 1M, 500k or 250000, got {text!r}")
    return int(float(match.group(1)) * _SUFFIXES[match.group(2).lower()])


def default_users(events: int) -> int:
    """1M users from 10M events up; below that ten events per user, the same ~9-day shape as 10M events."""
    return 1_000_000 if events >= 10_000_000 else max(1_000, events // 10)


def history_days(events: int, users: int) -> int:
    """Days of history for about `events` events from `users` users (see the module docstring)."""
    per_user = events / users
    return max(MIN_DAYS, round((per_user - EVENTS_PER_USER_ONCE) / EVENTS_PER_USER_DAY))


def plan_workload(events: int, users: int | None, seed: int) -> Workload:
    """The workload for a requested event count, with the default population when `users` is None."""
    count = users if users is not None else default_users(events)
    return Workload(events=events, users=count, days=history_days(events, count), seed=seed)
