"""The webhook channel plugin (`plugins/`), written against the channel extension point alone, through the real
pipeline: a journey with a `channel: webhook` send node, on generated sample data, dispatched to a fake receiver
that checks every signature.

One world for the module: a first run plans and dispatches (the first request answered 503, so one message is
retried), then the same as_of is run again. The registry is restored after the module, so no other test sees
the plugin's channel.
"""

import re
import shutil
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import select

import engine.channels.registry
from engine.channels.registry import channel
from engine.channels.senders import Senders
from engine.db import connect
from engine.definitions import load_definitions
from engine.dispatch_policy import DispatchSettings, WallClock
from engine.pipeline import RunContext, advance_journeys, dispatch, ingest, recompute_segments
from engine.render import TemplateStore
from engine.sample.generate import generate
from engine.settings import REPO_ROOT, EngineSettings
from engine.yaml_source import DefinitionError
from models.tables import OutboxMessage
from plugins.webhook_channel import plan
from plugins.webhook_fake import Delivery, FakeWebhookReceiver
from plugins.webhook_sender import WebhookMessage, WebhookSender
from plugins.webhook_signature import sign, verify

START = date(2026, 9, 1)
AS_OF = datetime.combine(START + timedelta(days=10), time(6), UTC)
SECRET = "a-shared-webhook-secret-1"
JOURNEY = """\
name: webhook_cart
status: active
entry:
  segment: cart_abandoners
start: notify
nodes:
  notify:
    send: {channel: %s, template: cart_reminder}
    next: done
  done:
    exit: completed
"""
BODY = '{"title": {{ item_name|tojson }}, "cart_url": {{ cart_url|tojson }}, "value": {{ cart_value|tojson }}}\n'
CORE = ("engine", "models", "tasks", "flows")


@pytest.fixture(scope="module")
def plugin_loaded() -> Iterator[None]:
    """NUDGE_CHANNEL_PLUGINS names the plugin; the registry is put back as it was afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine.channels.registry, "_REGISTERED", {})
        patch.setenv("NUDGE_CHANNEL_PLUGINS", "plugins.webhook_channel")
        yield


def write_tree(root: Path, channel_name: str = "webhook") -> None:
    shutil.copytree(REPO_ROOT / "definitions", root / "definitions")
    shutil.copytree(REPO_ROOT / "templates", root / "templates")
    (root / "definitions/journeys/webhook_cart.yaml").write_text(JOURNEY % channel_name)
    (root / "templates/webhook/cart_reminder").mkdir(parents=True)
    (root / "templates/webhook/cart_reminder/body.json.j2").write_text(BODY)


@dataclass
class World:
    first: list[Delivery]  # what the receiver got from the first run
    rerun: list[Delivery]  # ... and after the same as_of ran again
    outbox: pl.DataFrame  # the webhook rows, after both


@pytest.fixture(scope="module")
def world(plugin_loaded: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = tmp_path_factory.mktemp("webhook")
    generate(home / "snapshot", users=300, days=14, start=START, seed=5)
    write_tree(home)
    settings = EngineSettings(home=home, definitions_dir=home / "definitions", templates_dir=home / "templates")
    definitions = load_definitions(settings.definitions_dir, TemplateStore(settings.templates_dir))
    database = connect(settings.database)
    with FakeWebhookReceiver(SECRET) as receiver, pytest.MonkeyPatch.context() as patch:
        for name, value in receiver.env().items():
            patch.setenv(name, value)
        receiver.fail_next(1, status=503, retry_after="0")
        deliveries = []
        for run_id in ("run-1", "run-2"):
            ctx = RunContext(run_id=run_id, as_of=AS_OF, dry_run=False, settings=settings)
            ingest(ctx)
            advance_journeys(ctx, definitions, database, recompute_segments(ctx, definitions, database))
            with Senders({"webhook": channel("webhook").build_sender()}) as senders:
                dispatch(
                    ctx, database, TemplateStore(settings.templates_dir), senders,
                    settings=DispatchSettings(max_wait_seconds=5.0), clock=WallClock(),
                )  # fmt: skip
            deliveries.append(receiver.deliveries())
    with database.connect() as conn:
        table = OutboxMessage.__table__  # type: ignore[attr-defined]
        rows = conn.execute(select(table).where(table.c.channel == "webhook")).mappings().all()
    yield World(deliveries[0], deliveries[1], pl.DataFrame([dict(row) for row in rows], infer_schema_length=None))


def test_the_receiver_gets_exactly_the_planned_messages_with_valid_signatures(world: World):
    """Every message planned and due is delivered once, signed; those held for quiet hours wait (shipped policy)."""
    planned = world.outbox.filter(pl.col("reason").is_null())
    due = planned.filter(pl.col("not_before").is_null() | (pl.col("not_before") <= AS_OF))
    accepted = [d for d in world.first if d.status == 200]
    assert due.height >= 5, "the sample population abandons carts"
    assert sorted(d.send_key for d in accepted) == sorted(due.get_column("send_key"))
    assert all(d.signature_valid for d in world.first)
    assert set(due.get_column("status")) == {"accepted"}
    assert set(planned.join(due, on="send_key", how="anti").get_column("status")) <= {"planned"}
    by_key = {row["send_key"]: row for row in due.iter_rows(named=True)}
    for delivery in accepted:
        row = by_key[delivery.send_key]
        assert delivery.body["send_key"] == delivery.send_key and delivery.body["journey"] == "webhook_cart"
        assert delivery.body["recipient"] == row["user_id"] == row["recipient"]  # no webhook_id in the sample
        assert delivery.body["payload"]["cart_url"].startswith("https://shop.example.com/cart/")
        assert isinstance(delivery.body["payload"]["value"], float)


def test_a_rerun_of_the_same_as_of_sends_nothing_twice(world: World):
    assert world.rerun == world.first
    accepted = Counter(d.send_key for d in world.rerun if d.status == 200)
    assert set(accepted.values()) == {1}


def test_a_5xx_is_retried_until_accepted(world: World):
    [refused] = [d for d in world.first if d.status == 503]
    assert [d.status for d in world.first if d.send_key == refused.send_key] == [503, 200]
    [row] = world.outbox.filter(pl.col("send_key") == refused.send_key).iter_rows(named=True)
    assert (row["status"], row["attempts"]) == ("accepted", 2)
    others = world.outbox.filter((pl.col("send_key") != refused.send_key) & (pl.col("status") == "accepted"))
    assert others.get_column("attempts").unique().to_list() == [1]


def test_a_bad_secret_is_detected_by_the_receiver():
    message = WebhookMessage("k-1", b'{"hello":"world"}')
    with FakeWebhookReceiver(SECRET) as receiver:
        [outcome] = _sender(receiver.url, "not-the-shared-secret").send([message])
        [delivery] = receiver.deliveries()
    assert (delivery.send_key, delivery.signature_valid, delivery.status) == ("k-1", False, 401)
    assert (outcome.status, outcome.error_code) == ("failed", "webhook_401")
    assert "bad signature" in (outcome.detail or "")


def test_the_signature_covers_timestamp_and_body_and_expires():
    signature = sign(SECRET, 1_800_000_000, b"{}")
    assert verify(SECRET, "1800000000", b"{}", signature, now=1_800_000_100)
    assert not verify(SECRET, "1800000000", b"{ }", signature, now=1_800_000_100)
    assert not verify(SECRET, "1800000001", b"{}", signature, now=1_800_000_100)
    assert not verify(SECRET, "1800000000", b"{}", signature, now=1_800_000_000 + 301)


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, "7", ("retryable", "webhook_429", 7.0)),
        (502, None, ("retryable", "webhook_502", None)),
        (400, None, ("failed", "webhook_400", None)),
        (410, "3", ("failed", "webhook_410", None)),
    ],
)
def test_answers_are_classified(status, retry_after, expected):
    with FakeWebhookReceiver(SECRET) as receiver:
        receiver.fail_next(1, status=status, retry_after=retry_after)
        [outcome] = _sender(receiver.url, SECRET).send([WebhookMessage("k-1", b"{}")])
    assert (outcome.status, outcome.error_code, outcome.retry_after) == expected


def test_an_endpoint_that_does_not_answer_is_retryable_in_doubt_and_a_closed_one_retryable():
    with socket.socket() as silent:  # accepts connections into its backlog, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        [hung] = _sender(f"http://127.0.0.1:{silent.getsockname()[1]}/", SECRET, timeout=0.3).send(
            [WebhookMessage("k-1", b"{}")]
        )
        closed_port = _free_port()
    [refused] = _sender(f"http://127.0.0.1:{closed_port}/", SECRET).send([WebhookMessage("k-2", b"{}")])
    assert (hung.status, hung.error_code) == ("retryable", "timeout")
    assert (refused.status, refused.error_code) == ("retryable", "connection")


def test_the_recipient_is_the_webhook_id_when_set_and_consent_is_kept_when_given():
    users = pl.LazyFrame(
        {
            "user_id": ["a", "b", "c", "d"],
            "webhook_id": ["crm-a", "  ", None, "crm-d"],
            "webhook_consent": [True, True, None, False],
        }
    )
    sends = pl.LazyFrame({"send_key": ["k-a", "k-b", "k-c", "k-d"], "user_id": ["a", "b", "c", "d"]})
    rows = plan(sends, users).select("send_key", "recipient", "reason").sort("send_key").collect().rows()
    assert rows == [
        ("k-a", "crm-a", None),
        ("k-b", "b", None),
        ("k-c", "c", "no_consent"),
        ("k-d", "crm-d", "no_consent"),
    ]
    without = plan(sends, users.select("user_id")).sort("send_key").select("recipient", "reason").collect().rows()
    assert without == [("a", None), ("b", None), ("c", None), ("d", None)]


def test_a_journey_naming_an_unregistered_channel_is_refused_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setattr(engine.channels.registry, "_REGISTERED", {})
    monkeypatch.delenv("NUDGE_CHANNEL_PLUGINS", raising=False)
    write_tree(tmp_path, channel_name="sms")
    with pytest.raises(DefinitionError) as caught:
        load_definitions(tmp_path / "definitions", TemplateStore(tmp_path / "templates"))
    [problem] = [str(p) for p in caught.value.problems]
    assert problem.startswith("journeys/webhook_cart.yaml:8: nodes.notify.send.channel:")
    assert "unknown channel 'sms'" in problem and "email, push" in problem

    (tmp_path / "definitions/journeys/webhook_cart.yaml").write_text(JOURNEY % "webhook")
    with pytest.raises(DefinitionError, match="unknown channel 'webhook'"):
        load_definitions(tmp_path / "definitions", TemplateStore(tmp_path / "templates"))
    monkeypatch.setenv("NUDGE_CHANNEL_PLUGINS", "plugins.webhook_channel")
    loaded = load_definitions(tmp_path / "definitions", TemplateStore(tmp_path / "templates"))
    assert loaded.journeys["webhook_cart"].nodes["notify"].send.channel == "webhook"
    assert "templates/webhook/cart_reminder" in loaded.versions


def test_a_webhook_template_that_does_not_render_a_json_object_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(engine.channels.registry, "_REGISTERED", {})
    monkeypatch.setenv("NUDGE_CHANNEL_PLUGINS", "plugins.webhook_channel")
    write_tree(tmp_path)
    (tmp_path / "templates/webhook/cart_reminder/body.json.j2").write_text("Hello {{ first_name }}\n")
    with pytest.raises(DefinitionError, match=r"body\.json\.j2: did not render JSON"):
        load_definitions(tmp_path / "definitions", TemplateStore(tmp_path / "templates"))


def test_the_core_has_no_webhook_specific_code():
    """The plugin is reached only through NUDGE_CHANNEL_PLUGINS: no core module imports it or names its channel,
    its settings or its attributes (the SendGrid Event Webhook in engine/feedback is another matter)."""
    forbidden = re.compile(
        r"^\s*(from|import)\s+plugins\b|import_module\(\s*['\"]plugins|['\"]webhook['\"]|NUDGE_WEBHOOK|webhook_id",
        re.MULTILINE,
    )
    offenders = [
        f"{path.relative_to(REPO_ROOT)}: {match.group(0).strip()}"
        for folder in CORE
        for path in sorted((REPO_ROOT / folder).rglob("*.py"))
        for match in forbidden.finditer(path.read_text())
    ]
    assert offenders == []
    assert any(path.name == "webhook_channel.py" for path in (REPO_ROOT / "plugins").iterdir())


def _sender(url: str, secret: str, timeout: float = 2.0) -> WebhookSender:
    return WebhookSender(url, secret, timeout=timeout, workers=2)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
