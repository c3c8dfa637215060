"""`python -m engine.fakes` serves both fakes for another process and stops cleanly."""

import json
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path


def test_the_entry_point_prints_the_env_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.fakes", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(30, process.kill)  # never let a stuck child hang the suite
    watchdog.start()
    try:
        lines = [process.stdout.readline().strip() for _ in range(4)]  # type: ignore[union-attr]
        env = dict(line.split("=", 1) for line in lines)

        mail = {
            "personalizations": [{"to": [{"email": "ada@example.com"}]}],
            "from": {"email": "hello@example.com"},
            "subject": "Hi",
            "content": [{"type": "text/plain", "value": "Hi"}],
        }
        request = urllib.request.Request(
            f"{env['NUDGE_SENDGRID_HOST']}/v3/mail/send",
            data=json.dumps(mail).encode(),
            headers={"Authorization": f"Bearer {env['NUDGE_SENDGRID_API_KEY']}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as reply:
            assert reply.status == 202

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        watchdog.cancel()
        process.kill()
        process.communicate()

    assert set(env) == {
        "NUDGE_SENDGRID_API_KEY",
        "NUDGE_SENDGRID_HOST",
        "NUDGE_FCM_SERVICE_ACCOUNT_FILE",
        "NUDGE_FCM_ENDPOINT",
    }
    assert (tmp_path / "fakes.env").read_text().splitlines() == lines
    account = json.loads(Path(env["NUDGE_FCM_SERVICE_ACCOUNT_FILE"]).read_text())
    assert account["token_uri"] == f"{env['NUDGE_FCM_ENDPOINT']}/token"
    assert (tmp_path / "sendgrid-requests.jsonl").read_text().count("\n") == 1
