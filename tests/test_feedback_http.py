"""The webhook receiver over real HTTP on loopback: 204 stored, 403 not SendGrid's or stale, 400 unreadable."""

import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from engine.db import connect
from engine.fakes import FakeSendGrid
from engine.feedback.__main__ import main
from engine.feedback.server import WEBHOOK_PATH, WebhookServer, make_server
from engine.settings import REPO_ROOT
from models.feedback import ProviderEvent

NOW = datetime(2026, 10, 2, 9, 30, tzinfo=UTC)
T = int(NOW.timestamp())


@pytest.fixture
def fake() -> Iterator[FakeSendGrid]:
    with FakeSendGrid() as server:
        yield server


@pytest.fixture
def database(database_url: str) -> Engine:
    return connect(database_url)


@pytest.fixture
def server(fake: FakeSendGrid, database: Engine) -> Iterator[WebhookServer]:
    webhook = make_server(public_key=fake.webhook_public_key(), database=database, clock=lambda: NOW)
    thread = threading.Thread(target=webhook.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield webhook
    webhook.shutdown()
    webhook.server_close()
    thread.join()


def events(kind: str, count: int, *, timestamp: int) -> list[dict[str, object]]:
    """Events as SendGrid posts them, about mail nudge did not send (the receiver stores those too)."""
    return [
        {"sg_event_id": f"{kind}-{i}", "event": kind, "email": f"u{i}@example.com", "timestamp": timestamp}
        for i in range(count)
    ]


def stored(database: Engine) -> int:
    with database.connect() as conn:
        return conn.execute(select(func.count()).select_from(ProviderEvent.__table__)).scalar_one()


def test_the_receiver_answers_204_403_and_400_on_one_keep_alive_connection(
    fake: FakeSendGrid, database: Engine, server: WebhookServer
) -> None:
    good_body, good_headers = fake.signed_webhook_batch(events("delivered", 3, timestamp=T), timestamp=T)
    stale_body, stale_headers = fake.signed_webhook_batch(events("open", 3, timestamp=T), timestamp=T - 301)
    malformed = b'{"not": "an array"}'
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)

    def post(
        body: bytes, headers: dict[str, str], path: str = WEBHOOK_PATH, chunked: bool = False
    ) -> tuple[int, bytes]:
        if chunked:
            connection.request("POST", path, body=iter([body[:10], body[10:]]), headers=headers, encode_chunked=True)
        else:
            connection.request("POST", path, body=body, headers=headers)
        reply = connection.getresponse()
        return reply.status, reply.read()

    answers = [
        post(good_body, good_headers),
        post(good_body, good_headers, chunked=True),  # SendGrid's retry, streamed: stored once, still a success
        post(good_body.replace(b"delivered", b"bounce"), good_headers),
        post(stale_body, stale_headers),
        post(good_body, {"Content-Type": "application/json"}),
        post(malformed, fake.webhook_headers(malformed, timestamp=T)),
        post(good_body, good_headers, path="/webhooks/other"),
    ]
    connection.close()

    assert [status for status, _ in answers] == [204, 204, 403, 403, 403, 400, 404]
    assert answers[0][1] == b"" and answers[3][1] == b"forbidden"
    assert b"expected an array" in answers[5][1]
    assert stored(database) == 3


def test_python_m_engine_feedback_serves_the_webhook(fake: FakeSendGrid, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'receiver.db'}"
    env = os.environ | {"NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY": fake.webhook_public_key()}
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.feedback", "--port", "0", "--database-url", url],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        webhook_url = process.stdout.readline().strip()
        assert webhook_url.startswith("http://127.0.0.1:") and webhook_url.endswith(WEBHOOK_PATH)
        now = int(time.time())
        body, headers = fake.signed_webhook_batch(events("open", 1, timestamp=now), timestamp=now)
        port = int(webhook_url.split(":")[2].split("/")[0])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", WEBHOOK_PATH, body=body, headers=headers)
        status = connection.getresponse().status
        connection.close()
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=10)

    assert status == 204, errors
    assert process.returncode == 0, errors
    assert stored(connect(url)) == 1


def test_the_command_refuses_to_start_without_a_real_public_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY", "changeme")

    with pytest.raises(SystemExit) as exit_info:
        main(["--port", "0", "--database-url", "sqlite://"])

    assert exit_info.value.code == 2
    assert "NUDGE_SENDGRID_WEBHOOK_PUBLIC_KEY" in capsys.readouterr().err
