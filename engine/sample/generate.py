"""A seeded, realistic sample snapshot of an app's events and users, for demos, tests and load runs.

Day by day: each UTC day's events are generated from the users table alone and written to the partition of the
day they arrive, so memory stays bounded by one day (about 0.87 events per user per day once users churn:
1M users x 111 days is 97M events) and the same seed gives the same bytes.
"""

from __future__ import annotations

import time as clock
from collections import Counter
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import polars as pl

from engine.contract import EVENTS_DIR, USERS_DIR, partition_name
from engine.sample.activity import day_events
from engine.sample.catalog import build_catalog
from engine.sample.population import PRE_PERIOD_DAYS, PUBLIC_COLUMNS, build_users, utc_offsets
from engine.sample.writers import EXTENSIONS, SampleFormat, write_events, write_users

_ORDER = ("ts", "user_id", "event")


@dataclass(frozen=True)
class GenerateReport:
    """What a generation run wrote."""

    out_dir: Path
    users: int
    events: int
    events_by_type: dict[str, int]
    late_events: int
    partitions: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        """Generation throughput, for sizing larger runs."""
        return self.events / self.seconds if self.seconds else 0.0


def generate(
    out_dir: Path,
    *,
    users: int = 20_000,
    days: int = 60,
    start: date = date(2026, 9, 1),
    seed: int = 7,
    fmt: SampleFormat = "parquet",
) -> GenerateReport:
    """Write `out_dir/users/users.<ext>` and `out_dir/events/date=YYYY-MM-DD/part-0.<ext>`.

    Events happen in [start, start + days); a partition holds the events that arrived that UTC day, about 1% of
    them a day late, so one more partition after the period holds the last day's late arrivals.

    Args:
        out_dir: where to write; must not already hold `events/` or `users/`.
        users: population size, including users who signed up before the period and may have churned.
        days: length of the period in days.
        start: the first day of the period.
        seed: the random seed; the same seed gives byte-identical files.
        fmt: the file format of every file.
    """
    began = clock.perf_counter()
    for sub in (EVENTS_DIR, USERS_DIR):
        if (out_dir / sub).exists():
            raise FileExistsError(f"{out_dir / sub} already exists; generate into an empty folder")
    ext = EXTENSIONS[fmt]
    offsets = utc_offsets(start - timedelta(days=PRE_PERIOD_DAYS), start + timedelta(days=days))
    population = build_users(users, start=start, days=days, seed=seed, offsets=offsets)
    write_users(population.select(PUBLIC_COLUMNS), out_dir / USERS_DIR / f"users.{ext}", fmt)
    catalog = build_catalog(seed)

    pending: dict[date, list[pl.DataFrame]] = {}
    by_type: Counter[str] = Counter()
    late = partitions = 0
    for day in range(days):
        events = day_events(population.lazy(), catalog, offsets, start=start, day=day, days=days, seed=seed).collect()
        by_type.update(dict(events["event"].value_counts().rows()))
        late += events.filter(pl.col("arrival") > pl.col("ts").dt.date()).height
        for (arrival,), part in events.partition_by("arrival", as_dict=True, maintain_order=True).items():
            pending.setdefault(arrival, []).append(part.drop("arrival"))
        ready = sorted(arrival for arrival in pending if arrival <= start + timedelta(days=day))
        for arrival in ready:
            _write_partition(out_dir, arrival, pending.pop(arrival), fmt)
            partitions += 1
    for arrival in sorted(pending):
        _write_partition(out_dir, arrival, pending.pop(arrival), fmt)
        partitions += 1
    return GenerateReport(
        out_dir=out_dir,
        users=users,
        events=sum(by_type.values()),
        events_by_type=dict(sorted(by_type.items())),
        late_events=late,
        partitions=partitions,
        seconds=clock.perf_counter() - began,
    )


def _write_partition(out_dir: Path, arrival: date, parts: list[pl.DataFrame], fmt: SampleFormat) -> None:
    frame = pl.concat(parts).sort(_ORDER, maintain_order=True)
    write_events(frame, out_dir / EVENTS_DIR / partition_name(arrival) / f"part-0.{EXTENSIONS[fmt]}", fmt)
