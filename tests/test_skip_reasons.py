"""Skip counts by reason equal an independent computation over the same inputs (issue 5).

The real pipeline runs on generated sample data twice a day for eleven days (two runs can fall on one local day,
which is what a day cap needs; the days include a Monday, Europe's DST end on 25 October and the US one on
1 November), with the shipped definitions made tight in a copy: a control group, quiet hours that hold email
and drop push, caps per channel and per journey, `cart_recovery` switched to active and given the higher
priority so the two journeys compete, `abandoned_cart`'s push made transactional, and suppressed addresses
inserted before the first run and after a bounce in the middle. The users file is roughened first (blank time
zones, upper-case emails, a repeated token) as real snapshots are.

`tests/skip_reference.py` then plans the same runs from the raw files alone; the only input it shares with the
engine is the list of messages the journeys asked for, read from each run's outbox.
"""

import random
import shutil
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml
from sqlalchemy import Engine, insert, select

from engine.db import connect
from engine.definitions import load_definitions
from engine.pipeline import RunContext, advance_journeys, ingest, recompute_segments
from engine.render import TemplateStore
from engine.sample.generate import generate
from engine.settings import REPO_ROOT, EngineSettings
from models.feedback import Suppression
from models.tables import OutboxMessage
from tests.skip_reference import Reference, Row, Wanted

START = date(2026, 10, 12)
RUNS = [datetime.combine(START + timedelta(days=day), time(hour), UTC) for day in range(10, 21) for hour in (6, 18)]
BOUNCE_RUN = 8  # before this run, recipients of the previous run's planned messages are suppressed
POLICY = {
    "control_group": {"percent": 8, "seed": "skip-reasons"},
    "caps": {"email": {"per_day": 1, "per_week": 2}, "push": {"per_day": 2, "per_week": 2}},
    "journey_caps": {"cart_recovery": {"email": {"per_week": 1}, "push": {"per_day": 1}}},
    "quiet_hours": {
        "start": "23:30",
        "end": "07:00",
        "mode": "hold",
        "channels": {"push": {"start": "23:00", "end": "04:00", "mode": "drop"}},
    },
}
EXPECTED_REASONS = (
    "no_email",
    "no_consent",
    "no_push_token",
    "suppressed",
    "unregistered",
    "control_group",
    "quiet_hours",
    "lower_priority",
    "frequency_cap:email:day",
    "frequency_cap:email:week",
    "frequency_cap:push:week",
    "journey_cap:cart_recovery:push:day",
    "journey_cap:cart_recovery:email:week",
)
OUTBOX_SCHEMA = {
    **dict.fromkeys(("send_key", "journey", "node", "instance_id", "user_id", "channel", "recipient"), pl.String),
    "transactional": pl.Boolean,
    "status": pl.String,
    "reason": pl.String,
    "not_before": pl.Datetime("us", "UTC"),
}
_OUTBOX = OutboxMessage.__table__  # type: ignore[attr-defined]
_SUPPRESSION = Suppression.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Run:
    as_of: datetime
    engine: list[Row]
    reference: list[Row]
    quirks: Counter[str]  # how often the roughened inputs and the transactional path came into play


def skip_counts(rows: list[Row]) -> Counter[tuple[str, str]]:
    return Counter((row.channel, row.reason) for row in rows if row.status == "skipped" and row.reason)


def planned_counts(rows: list[Row]) -> Counter[tuple[str, str, bool]]:
    return Counter((row.channel, row.journey, row.not_before is not None) for row in rows if row.status == "planned")


def held(rows: list[Row]) -> Counter[tuple[str, datetime]]:
    return Counter((row.channel, row.not_before) for row in rows if row.status == "planned" and row.not_before)


def roughen_users(users_file: Path) -> None:
    """Blank some time zones (UTC applies), upper-case some emails, repeat a token: what snapshots contain."""
    users = pl.read_parquet(users_file)
    draw = random.Random(11)
    rough = pl.Series([draw.random() for _ in range(users.height)])
    users.with_columns(
        pl.when(rough < 0.05).then(pl.lit(None, pl.String)).otherwise("timezone").alias("timezone"),
        pl.when(rough > 0.9).then(pl.col("email").str.to_uppercase()).otherwise("email").alias("email"),
        pl.when(rough.is_between(0.5, 0.6))
        .then(pl.concat_list("push_tokens", "push_tokens"))
        .otherwise("push_tokens")
        .alias("push_tokens"),
    ).write_parquet(users_file)


def tighten_definitions(root: Path) -> None:
    """The shipped definitions, with the policy above and both journeys live and competing."""
    (root / "delivery.yaml").write_text(yaml.safe_dump(POLICY))
    recovery = root / "journeys" / "cart_recovery.yaml"
    recovery.write_text(recovery.read_text().replace("status: draft", "status: active\npriority: 2"))
    abandoned = root / "journeys" / "abandoned_cart.yaml"
    push = "send: {channel: push, template: cart_push}"
    assert push in abandoned.read_text()
    abandoned.write_text(abandoned.read_text().replace(push, push[:-1] + ", transactional: true}"))


def first_suppressions(users_file: Path) -> list[tuple[str, str]]:
    """A tenth of the addresses and tokens in the snapshot, drawn at random."""
    users = pl.read_parquet(users_file)
    draw = random.Random(12)
    emails = [("email", email.lower()) for email in users.get_column("email").drop_nulls() if draw.random() < 0.1]
    tokens = users.get_column("push_tokens").explode().drop_nulls().unique(maintain_order=True)
    return emails + [("push", token) for token in tokens if draw.random() < 0.1]


def bounced(outbox: pl.DataFrame) -> list[tuple[str, str]]:
    """Half the recipients a run planned to reach: their mail bounced, their tokens went stale."""
    planned = outbox.filter(pl.col("status") == "planned").sort("send_key").gather_every(2)
    return [
        (channel, recipient.lower() if channel == "email" else recipient)
        for channel, recipient in planned.select("channel", "recipient").unique(maintain_order=True).iter_rows()
    ]


def suppress(database: Engine, pairs: list[tuple[str, str]], *, since: datetime) -> None:
    """What the feedback receiver and the dispatcher would have written for these (channel, address) pairs."""
    rows = [
        {"channel": channel, "address": address, "reason": "bounce", "source": "test", "since": since}
        for channel, address in dict.fromkeys(pairs)
    ]
    with database.begin() as conn:
        conn.execute(insert(_SUPPRESSION), rows)


def priorities(root: Path) -> dict[str, int]:
    """Each journey's priority as its YAML says, 0 when it says nothing."""
    return {
        path.stem: int((yaml.safe_load(path.read_text()) or {}).get("priority", 0))
        for path in (root / "journeys").glob("*.yaml")
    }


def wanted(outbox: pl.DataFrame, priority: dict[str, int]) -> list[Wanted]:
    """What the journeys asked for in one run: one entry per message, however many rows it has."""
    messages = outbox.unique(["instance_id", "node"]).sort("instance_id", "node")
    return [
        Wanted(
            user_id=row["user_id"],
            journey=row["journey"],
            node=row["node"],
            instance_id=row["instance_id"],
            channel=row["channel"],
            transactional=row["transactional"],
            priority=priority[row["journey"]],
        )
        for row in messages.iter_rows(named=True)
    ]


def engine_rows(outbox: pl.DataFrame) -> list[Row]:
    columns = ("channel", "journey", "status", "reason", "not_before")
    return [Row(*values) for values in outbox.select(columns).iter_rows()]


def quirks(outbox: pl.DataFrame, users_file: Path) -> Counter[str]:
    """Rows that only a careful reading of the inputs gets right, so the comparison is known to cover them."""
    users = pl.read_parquet(users_file)
    zoneless = users.filter(pl.col("timezone").is_null()).get_column("user_id")
    doubled = users.filter(pl.col("push_tokens").list.n_unique() < pl.col("push_tokens").list.len())
    suppressed = outbox.filter(pl.col("reason") == "suppressed").get_column("recipient")
    planned = outbox.filter(pl.col("status") == "planned")
    return Counter(
        {
            "suppressed upper-case address": (suppressed != suppressed.str.to_lowercase()).sum(),
            "push to a user listing a token twice": planned.filter(
                pl.col("channel") == "push", pl.col("user_id").is_in(doubled.get_column("user_id").implode())
            ).height,
            "marketing to a user without time zone": planned.filter(
                ~pl.col("transactional"), pl.col("user_id").is_in(zoneless.implode())
            ).height,
            "transactional planned": planned.filter(pl.col("transactional")).height,
        }
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Run]:
    base = tmp_path_factory.mktemp("skips")
    generate(base / "snapshot", users=2000, days=22, start=START, seed=3)
    users_file = base / "snapshot" / "users" / "users.parquet"
    roughen_users(users_file)
    shutil.copytree(REPO_ROOT / "definitions", base / "definitions")
    tighten_definitions(base / "definitions")
    settings = EngineSettings(home=base / "home", snapshot_dir=base / "snapshot", definitions_dir=base / "definitions")
    definitions = load_definitions(settings.definitions_dir, TemplateStore(settings.templates_dir))
    database = connect(settings.database)
    reference = Reference(users_file, base / "definitions" / "delivery.yaml")
    priority = priorities(base / "definitions")

    suppressions = first_suppressions(users_file)
    suppress(database, suppressions, since=RUNS[0])
    outbox = pl.DataFrame(schema=OUTBOX_SCHEMA)
    results = []
    for number, as_of in enumerate(RUNS):
        if number == BOUNCE_RUN:
            bounces = bounced(outbox)
            suppress(database, bounces, since=as_of)
            suppressions += bounces
        ctx = RunContext(run_id=f"run-{number}", as_of=as_of, dry_run=False, settings=settings)
        ingest(ctx)
        advance_journeys(ctx, definitions, database, recompute_segments(ctx, definitions, database))
        with database.connect() as conn:
            found = conn.execute(
                select(*(_OUTBOX.c[name] for name in OUTBOX_SCHEMA)).where(_OUTBOX.c.run_id == ctx.run_id)
            ).all()
        outbox = pl.DataFrame([tuple(row) for row in found], schema=OUTBOX_SCHEMA, orient="row")
        expected = reference.plan(as_of, wanted(outbox, priority), suppressions)
        results.append(Run(as_of, engine_rows(outbox), expected, quirks(outbox, users_file)))
    return results


@pytest.mark.parametrize("number", range(len(RUNS)), ids=[f"{as_of:%m-%d_%H}h" for as_of in RUNS])
def test_skip_counts_by_reason_equal_the_reference_in_every_run(runs: list[Run], number: int):
    assert skip_counts(runs[number].engine) == skip_counts(runs[number].reference)


def test_skip_counts_by_reason_equal_the_reference_over_all_runs(runs: list[Run]):
    assert sum((skip_counts(run.engine) for run in runs), Counter()) == sum(
        (skip_counts(run.reference) for run in runs), Counter()
    )


def test_planned_and_held_messages_equal_the_reference(runs: list[Run]):
    """The rows let through, per journey and channel, and the instants held ones wait for: what later caps count."""
    for run in runs:
        assert planned_counts(run.engine) == planned_counts(run.reference), run.as_of
        assert held(run.engine) == held(run.reference), run.as_of


def test_every_reason_meant_to_occur_occurs(runs: list[Run]):
    """Else the comparison could pass with a control that never fired, or only ever agree on nothing."""
    occurred = sum((skip_counts(run.engine) for run in runs), Counter())
    reasons = {reason for _, reason in occurred}
    assert set(EXPECTED_REASONS) <= reasons, sorted(set(EXPECTED_REASONS) - reasons)
    assert sum(sum(held(run.engine).values()) for run in runs) > 0


def test_the_roughened_inputs_and_the_transactional_path_came_into_play(runs: list[Run]):
    """Else agreeing on them would prove nothing."""
    seen = sum((run.quirks for run in runs), Counter())
    assert all(seen[name] > 0 for name in runs[0].quirks), seen
