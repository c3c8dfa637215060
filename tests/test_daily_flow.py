"""The daily flow end to end: Prefect runs over consecutive days, real SDKs, real HTTP to the fake providers.

What the fakes received is checked against `reference_deliveries`, an independent plain-Python reading of the
abandoned-cart journey over the raw generated rows (no rollups, no Polars logic, no engine code).
"""

import json
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from uuid import UUID

import polars as pl
import pytest
from sqlalchemy import select

from engine.db import connect
from engine.fakes import FakeProviders
from engine.fakes.sendgrid import AcceptedMail
from engine.sample.generate import generate
from engine.settings import REPO_ROOT
from models.tables import OutboxMessage, Run

START = date(2026, 9, 1)
HISTORY_DAYS = 24
RUN_DAYS = 6
RUN_TIMES = [
    datetime.combine(START + timedelta(days=HISTORY_DAYS - RUN_DAYS + i), time(6), UTC) for i in range(RUN_DAYS)
]
DAY = timedelta(days=1)


@dataclass
class World:
    home: Path
    snapshot: Path
    fakes: FakeProviders
    summaries: list
    env: dict[str, str]
    database_url: str

    def emails(self) -> list[AcceptedMail]:
        """Every email SendGrid accepted: one per personalization of each accepted request."""
        return self.fakes.sendgrid.accepted()

    def pushes(self) -> list[dict]:
        return [r.body["message"] for r in self.fakes.fcm.received("/v1/") if r.status == 200]

    def outbox(self) -> list[dict]:
        table = OutboxMessage.__table__
        with connect(self.database_url).connect() as conn:
            return [dict(row) for row in conn.execute(select(table).order_by(table.c.send_key)).mappings().all()]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, prefect_harness, tmp_path_factory) -> Iterator[World]:
    """The same week of runs on each supported database: the engine's state must mean the same on both."""
    from flows.daily import daily_campaign

    home = tmp_path_factory.mktemp("daily")
    if request.param == "sqlite":
        database_url = f"sqlite:///{home / 'nudge.db'}"
    else:
        database_url = request.getfixturevalue("postgres_server").database()
    snapshot = home / "snapshot"
    generate(snapshot, users=600, days=HISTORY_DAYS, start=START, seed=11)
    # The reference reads the journey, not the delivery policy (tested on its own against its own reference):
    # these runs use the shipped definitions without it.
    definitions = home / "definitions"
    shutil.copytree(REPO_ROOT / "definitions", definitions)
    (definitions / "delivery.yaml").unlink()
    with FakeProviders(home / "fakes") as fakes, pytest.MonkeyPatch.context() as patch:
        env = {
            **fakes.env(),
            "NUDGE_HOME": str(home),
            "NUDGE_SNAPSHOT_DIR": str(snapshot),
            "NUDGE_DEFINITIONS_DIR": str(definitions),
            "NUDGE_DATABASE_URL": database_url,
        }
        for name, value in env.items():
            patch.setenv(name, value)
        summaries = [daily_campaign(as_of=as_of) for as_of in RUN_TIMES]
        yield World(home, snapshot, fakes, summaries, env, database_url)


def reference_deliveries(snapshot: Path, run_times: list[datetime]) -> tuple[Counter, Counter]:
    """Emails (by address) and pushes (by token) the abandoned-cart journey should send, in plain Python."""
    events = []
    for path in sorted(snapshot.glob("events/date=*/*.parquet")):
        arrived = date.fromisoformat(path.parent.name.removeprefix("date="))
        events += [(u, e, ts, arrived) for u, e, ts in pl.read_parquet(path, columns=["user_id", "event", "ts"]).rows()]
    users = {row["user_id"]: row for row in pl.read_parquet(snapshot / "users" / "users.parquet").rows(named=True)}

    emails: Counter = Counter()
    pushes: Counter = Counter()
    previous: set[str] = set()
    journeys: dict[str, dict] = {}
    for now in run_times:
        seen = [(u, e, ts) for u, e, ts, arrived in events if arrived <= now.date() and ts < now]
        carted = {u for u, e, ts in seen if e == "add_to_cart" and now - 7 * DAY <= ts}
        bought = {u for u, e, ts in seen if e == "purchase" and now - 7 * DAY <= ts}
        members = carted - bought
        entered, previous = members - previous, members

        def bought_since(user: str, since: datetime, seen=seen) -> bool:
            return any(u == user and e == "purchase" and ts >= since for u, e, ts in seen)

        for user in sorted(entered):
            if journeys.get(user, {}).get("active"):
                continue
            journeys[user] = {"active": True, "entered": now, "node": "first_wait", "due": now + DAY, "new": True}
        for user, state in journeys.items():
            if not state["active"] or state.pop("new", False) or state["due"] > now:
                continue
            if bought_since(user, state["entered"]):
                state["active"] = False
            elif state["node"] == "first_wait":
                person = users[user]
                if person["email"] and person["email_consent"]:
                    emails[person["email"]] += 1
                state.update(node="second_wait", due=now + 2 * DAY)
            else:
                person = users[user]
                if person["push_consent"]:
                    for token in dict.fromkeys(person["push_tokens"] or []):
                        pushes[token] += 1
                state["active"] = False
    return emails, pushes


def test_fakes_received_exactly_what_the_reference_computes(world: World):
    expected_emails, expected_pushes = reference_deliveries(world.snapshot, RUN_TIMES)
    got_emails = Counter(mail.email for mail in world.emails())
    got_pushes = Counter(message["token"] for message in world.pushes())
    assert sum(expected_emails.values()) >= 10 and sum(expected_pushes.values()) >= 5, "too small to mean anything"
    assert got_emails == expected_emails
    assert got_pushes == expected_pushes


def test_every_message_carries_its_send_key_to_the_provider(world: World):
    email_keys = [mail.custom_args["send_key"] for mail in world.emails()]
    push_keys = [message["data"]["send_key"] for message in world.pushes()]
    assert len(set(email_keys)) == len(email_keys) and len(set(push_keys)) == len(push_keys)
    accepted = {row["send_key"] for row in world.outbox() if row["status"] == "accepted"}
    assert set(email_keys) | set(push_keys) == accepted
    for message in world.pushes():
        assert message["android"]["notification"]["tag"] == message["data"]["send_key"]


def test_each_day_reports_segments_journeys_and_messages(world: World):
    assert [s.as_of for s in world.summaries] == RUN_TIMES
    for summary in world.summaries:
        assert {s.name for s in summary.segments} == {
            "cart_abandoners",
            "dormant_new_users",
            "loyalists",
            "top_spenders",
        }
        assert summary.delivery["email"].outcomes.get("failed", 0) == 0
    sent = sum(s.messages().get("email_sent", 0) + s.messages().get("push_sent", 0) for s in world.summaries)
    assert sent == len(world.emails()) + len(world.pushes())


def test_rerunning_a_day_sends_nothing_and_leaves_the_outbox_as_it_was(world: World):
    from flows.daily import daily_campaign

    before = (len(world.fakes.sendgrid.received()), len(world.fakes.fcm.received("/v1/")), world.outbox())
    with pytest.MonkeyPatch.context() as patch:
        for name, value in world.env.items():
            patch.setenv(name, value)
        summary = daily_campaign(as_of=RUN_TIMES[-1])
    after = (len(world.fakes.sendgrid.received()), len(world.fakes.fcm.received("/v1/")), world.outbox())
    assert after == before
    assert all(journey.transitions == 0 for journey in summary.journeys)


def test_each_run_publishes_a_summary_artifact(world: World):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = [f"run-{as_of:%Y-%m-%d-%H%M}" for as_of in RUN_TIMES]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    assert {artifact.key for artifact in artifacts} == set(keys)
    for artifact in artifacts:
        assert "## Segments" in artifact.data and "cart_abandoners" in artifact.data and "| email |" in artifact.data


def test_the_cart_email_experiment_is_published_counting_every_assigned_user(world: World):
    """The shipped journey's email is an experiment: its artifact counts every user given a variant, including
    the ones never emailed (no address, no consent): intent to treat."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    assigned = {row["user_id"]: row["variant"] for row in world.outbox() if row["node"] == "email_reminder"}
    assert {row["status"] for row in world.outbox() if row["node"] == "email_reminder"} >= {"accepted", "skipped"}
    last_run = UUID(world.summaries[-1].run_id)  # the harness is shared: other modules publish the same key
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["experiment-abandoned-cart-email-reminder"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[last_run]),
            )
        )
    arms_table = artifact.data.split("| arm | users |")[1].split("\n\n")[0]  # not the guardrails table below it
    rows = {
        line.split(" | ")[0].strip("| "): line.split(" | ") for line in arms_table.splitlines() if line.startswith("| ")
    }
    for arm in ("control", "saved"):
        assert int(rows[arm][1].replace(",", "")) == sum(variant == arm for variant in assigned.values())
    page = world.home / "reports" / f"experiment-abandoned-cart-email-reminder-{RUN_TIMES[-1]:%Y-%m-%dT%H%M}.html"
    assert "saved" in page.read_text(encoding="utf-8")


def test_each_live_run_writes_its_html_page_with_the_days_before(world: World):
    for as_of in RUN_TIMES:
        page = (world.home / "reports" / f"run-{as_of:%Y-%m-%d-%H%M}.html").read_text(encoding="utf-8")
        assert f"{as_of:%Y-%m-%d}" in page and "<svg" in page


def test_the_run_history_records_definitions_and_snapshot(world: World):
    table = Run.__table__
    with connect(world.database_url).connect() as conn:
        runs = conn.execute(select(table).where(table.c.dry_run.is_(False)).order_by(table.c.as_of)).mappings().all()
    assert sorted({run["as_of"] for run in runs}) == RUN_TIMES
    assert all(run["status"] == "completed" for run in runs)
    for run in runs:
        versions = json.loads(run["definitions"])
        assert "journeys/abandoned_cart.yaml" in versions and "templates/email/cart_reminder" in versions
        assert len(run["snapshot_fingerprint"]) == 64


def test_a_template_error_stops_the_run_before_anything_is_sent(world: World, tmp_path: Path):
    from flows.daily import daily_campaign

    templates = tmp_path / "templates"
    shutil.copytree(REPO_ROOT / "templates", templates)
    body = templates / "push" / "cart_push" / "body.txt.j2"
    body.write_text(body.read_text() + " {{ discount_code }}")
    before = (len(world.fakes.sendgrid.received()), len(world.fakes.fcm.received("/v1/")), world.outbox())
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**world.env, "NUDGE_TEMPLATES_DIR": str(templates)}.items():
            patch.setenv(name, value)
        with pytest.raises(Exception, match="discount_code"):
            daily_campaign(as_of=RUN_TIMES[-1] + DAY)
    assert (len(world.fakes.sendgrid.received()), len(world.fakes.fcm.received("/v1/")), world.outbox()) == before
