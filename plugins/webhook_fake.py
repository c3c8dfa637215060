"""A fake webhook endpoint on 127.0.0.1 that verifies every signature and records every request.

It answers 200 (with an `X-Message-Id`) to a well-signed request, 401 to a badly signed one, and, when told to
with `fail_next`, a scripted status (503 with `Retry-After: 0` by default) to the next requests whatever their
signature: the three answers the webhook sender must tell apart. Use it as a context manager; `env()` gives the
variables that point the webhook channel at it.
"""

import itertools
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from plugins.webhook_signature import SEND_KEY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


@dataclass(frozen=True, slots=True)
class Delivery:
    """One request as received: the send key header, whether its signature held, its parsed body, our answer."""

    send_key: str | None
    signature_valid: bool
    body: Any
    status: int


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # the default backlog of 5 drops a wave's burst of connections
    daemon_threads = True


class FakeWebhookReceiver:
    """Serves on a free port of 127.0.0.1 from a daemon thread, checking signatures with `secret`."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._deliveries: list[Delivery] = []
        self._failures: list[tuple[int, dict[str, str]]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the receiver is not started")
        return f"http://127.0.0.1:{self._server.server_port}/hooks/nudge"

    def env(self) -> dict[str, str]:
        """NUDGE_WEBHOOK_URL and NUDGE_WEBHOOK_SECRET for this receiver."""
        return {"NUDGE_WEBHOOK_URL": self.url, "NUDGE_WEBHOOK_SECRET": self.secret}

    def fail_next(self, count: int, status: int = 503, retry_after: str | None = "0") -> None:
        """Answer the next `count` requests with `status` (and a Retry-After, when given) instead."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        with self._lock:
            self._failures.extend([(status, headers)] * count)

    def deliveries(self) -> list[Delivery]:
        """Every request so far, in arrival order."""
        with self._lock:
            return list(self._deliveries)

    def __enter__(self) -> Self:
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()

    def _answer(self, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], bytes]:
        valid = verify(
            self.secret, headers.get(TIMESTAMP_HEADER, ""), raw, headers.get(SIGNATURE_HEADER, ""), now=time.time()
        )
        with self._lock:
            if self._failures:
                status, extra = self._failures.pop(0)
                reply = {"error": "scripted failure"}
            elif not valid:
                status, extra, reply = 401, {}, {"error": "bad signature"}
            else:
                status, extra, reply = 200, {"X-Message-Id": f"hook-{next(self._ids)}"}, {"ok": True}
            self._deliveries.append(Delivery(headers.get(SEND_KEY_HEADER), valid, _parsed(raw), status))
        return status, extra, json.dumps(reply).encode()


def _parsed(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _handler_for(receiver: FakeWebhookReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        wbufsize = 64 * 1024  # buffered writes: unbuffered, each answer waits ~40 ms on delayed ACKs

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, headers, body = receiver._answer(dict(self.headers.items()), raw)
            self.send_response(status)
            for name, value in {**headers, "Content-Type": "application/json"}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests read `deliveries()`, not stderr."""

    return Handler
