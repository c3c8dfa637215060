"""The HTTP edge of the receiver: POST /webhooks/sendgrid on a stdlib ThreadingHTTPServer.

SendGrid retries a batch that gets anything but a 2xx (for up to 24 hours), so the status codes matter:
204 stored (or already had it), 403 not provably SendGrid's or stale, 400 authentic but unreadable, 413 too
big, 500 our fault (retry welcome). Only this module reads the clock.
"""

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sqlalchemy import Engine

from engine.feedback.errors import MalformedBatch, SignatureRejected
from engine.feedback.receive import receive_sendgrid

WEBHOOK_PATH = "/webhooks/sendgrid"
MAX_BODY_BYTES = 16 * 1024 * 1024  # SendGrid posts batches of at most a few MB

log = logging.getLogger(__name__)


class WebhookServer(ThreadingHTTPServer):
    # The default backlog of 5 drops connections when SendGrid opens several at once.
    request_queue_size = 128
    daemon_threads = True


class _BodyError(Exception):
    """A request body we will not read: its status and why."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


def make_server(
    *,
    public_key: str,
    database: Engine,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> WebhookServer:
    """A bound server (port 0: a free one, see `server_address`); call `serve_forever` to serve.

    Args:
        public_key: SendGrid's verification key, base64 DER.
        database: where events, facts and suppressions go.
        host: the interface to listen on; loopback unless a proxy in front needs otherwise.
        port: the TCP port.
        clock: the time of receipt, replaceable for tests.
    """
    return WebhookServer((host, port), _handler(public_key=public_key, database=database, clock=clock))


def _handler(*, public_key: str, database: Engine, clock: Callable[[], datetime]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive between SendGrid's posts
        # Buffer the response: unbuffered, the headers go out in small writes and Nagle's algorithm with
        # delayed ACKs adds ~40 ms to every keep-alive request.
        wbufsize = -1
        timeout = 30  # an idle keep-alive connection must not hold a thread forever

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != WEBHOOK_PATH:
                self.close_connection = True  # its body is unread
                self._answer(404, "not found")
                return
            try:
                body = self._read_body()
            except _BodyError as exc:
                self.close_connection = True  # what is left of the body would be read as the next request
                self._answer(exc.status, str(exc))
                return
            try:
                result = receive_sendgrid(
                    body, dict(self.headers.items()), now=clock(), public_key=public_key, database=database
                )
            except SignatureRejected as exc:
                log.warning("webhook refused (403): %s", exc)
                self._answer(403, "forbidden")
            except MalformedBatch as exc:
                log.warning("webhook refused (400): %s", exc)
                self._answer(400, str(exc))
            except Exception:
                log.exception("webhook failed (500); SendGrid will retry")
                self._answer(500, "internal error")
            else:
                log.info("webhook stored %d events, %d duplicates", result.stored, result.duplicates)
                self._answer(204)

        def _read_body(self) -> bytes:
            """The body, by Content-Length or chunked transfer coding (as a client or proxy may stream it)."""
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._read_chunks()
            length = _natural(self.headers.get("Content-Length") or "0", base=10)
            if length is None:
                raise _BodyError(400, "bad Content-Length")
            if length > MAX_BODY_BYTES:
                raise _BodyError(413, "body too large")
            return self.rfile.read(length)

        def _read_chunks(self) -> bytes:
            body = bytearray()
            while True:
                size = _natural(self.rfile.readline(64).split(b";", 1)[0].decode("latin-1"), base=16)
                if size is None:
                    raise _BodyError(400, "bad chunk size")
                if len(body) + size > MAX_BODY_BYTES:
                    raise _BodyError(413, "body too large")
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass  # trailer fields: none we need
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline(8)  # the CRLF after each chunk

        def do_GET(self) -> None:
            self._answer(405, "POST only", allow="POST")

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

        def _answer(self, status: int, text: str = "", *, allow: str | None = None) -> None:
            self.send_response(status)
            if allow:
                self.send_header("Allow", allow)
            if status != 204:  # a 204 carries no body and no Content-Length (RFC 9110 8.6)
                payload = text.encode()
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            else:
                self.end_headers()

    return Handler


def _natural(text: str, *, base: int) -> int | None:
    """A non-negative integer, or None: a negative length would make `read` wait for the connection's end."""
    try:
        value = int(text.strip(), base)
    except ValueError:
        return None
    return value if value >= 0 else None
