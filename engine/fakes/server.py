"""A loopback HTTP server that records every request: the common ground of the provider fakes.

Fakes subclass `FakeServer` and answer in `handle`. Each request is recorded (in memory, and as one
JSON line in `record_file` when given) with the status it got, so tests can assert on exactly what the
real SDKs put on the wire; `GET /_fake/requests` serves the same record to another process.
"""

import http.client
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self
from urllib.parse import parse_qs, urlsplit

INTROSPECTION_PATH = "/_fake/requests"
# How often the serving loop checks for stop(); the stdlib default of 0.5 s makes every stop that slow.
_POLL_INTERVAL = 0.05
# The stdlib's limits on a request's header block (http.client._MAXLINE and _MAXHEADERS).
_MAX_LINE = 65536
_MAX_HEADERS = 100


@dataclass(frozen=True, slots=True)
class Request:
    """A request as the fake sees it; `body` is parsed JSON, form fields, text, or None."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    timestamp: float

    def header(self, name: str) -> str | None:
        """A header by case-insensitive name."""
        wanted = name.lower()
        return next((v for k, v in self.headers.items() if k.lower() == wanted), None)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the fake answers: a status, a JSON body (or none), and headers."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request and the status it was answered with; `timestamp` is its arrival, epoch seconds."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int
    timestamp: float


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 drops connections when a thread pool opens many at once.
    request_queue_size = 128
    daemon_threads = True


class FakeServer:
    """Serves `handle` on 127.0.0.1 from a daemon thread; start()/stop() or use as a context manager.

    `clock` (epoch seconds) stamps each request's arrival; a test may share it with the code under test.
    """

    # Where the provider's sends arrive: what `hold_accepted` holds.
    send_path_prefix = "/"

    def __init__(self, port: int = 0, record_file: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self._port = port
        self._record_file = record_file
        self.clock = clock
        self._hold_skip = 0
        self._hold_left = 0
        self._held: list[Request] = []
        self._released = threading.Event()
        self._records: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def handle(self, request: Request) -> Reply:
        """Answer one request; subclasses implement the provider's API here."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:54321 (known once started)."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._server.server_port}"

    def start(self) -> Self:
        """Bind (a free port unless one was given) and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self._port), _handler_for(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"{type(self).__name__}-{self._server.server_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut short any scripted hang, and release the port."""
        if self._server is None:
            return
        self._stopping.set()
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def received(self, path_prefix: str = "") -> list[RecordedRequest]:
        """Requests received so far, oldest first, optionally only those whose path starts with a prefix."""
        with self._lock:
            return [r for r in self._records if r.path.startswith(path_prefix)]

    def clear(self) -> None:
        """Forget the requests received so far (not the record file)."""
        with self._lock:
            self._records.clear()

    def pause(self, seconds: float) -> None:
        """Sleep inside a handler, as a hung provider would, unless the fake is being stopped."""
        self._stopping.wait(seconds)

    def hold_accepted(self, count: int, *, skip: int = 0) -> None:
        """Let `skip` accepted (2xx) sends through, then record the next `count` but hold their answers.

        The provider has taken those messages and the client does not know yet: the moment a crash makes a
        send's outcome unknown. Answers go out on `release_held()` or `stop()`.
        """
        with self._lock:
            self._hold_skip, self._hold_left = skip, count
            self._held.clear()
            self._released.clear()

    def held(self) -> list[Request]:
        """The accepted sends whose answers are being held."""
        with self._lock:
            return list(self._held)

    def release_held(self) -> None:
        """Send the held answers (to whoever is still listening)."""
        self._released.set()

    def _hold_if_asked(self, request: Request, reply: Reply) -> None:
        if not (200 <= reply.status < 300 and request.path.startswith(self.send_path_prefix)):
            return
        with self._lock:
            if self._hold_skip > 0:
                self._hold_skip -= 1
                return
            if self._hold_left <= 0:
                return
            self._hold_left -= 1
            self._held.append(request)
        self._released.wait()

    def _record(self, request: Request, status: int) -> None:
        record = RecordedRequest(
            request.method, request.path, dict(request.headers), request.body, status, request.timestamp
        )
        with self._lock:
            self._records.append(record)
            if self._record_file is not None:
                with self._record_file.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(asdict(record)) + "\n")


def _handler_for(fake: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' connection pools expect
        # Buffer the response: unbuffered, the headers go out in small writes and Nagle's algorithm
        # with delayed ACKs adds ~40 ms to every keep-alive request.
        wbufsize = -1

        def do_GET(self) -> None:
            self._dispatch()

        def do_POST(self) -> None:
            self._dispatch()

        def do_PUT(self) -> None:
            self._dispatch()

        def do_PATCH(self) -> None:
            self._dispatch()

        def do_DELETE(self) -> None:
            self._dispatch()

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: every request is recorded instead."""

        def parse_request(self) -> bool:
            """The stdlib's parse_request with a lighter header parser.

            The stdlib hands the header block to the email package, which took two thirds of the FCM fake's
            CPU under a sender's load (~0.2 ms a request): the fake then competed with the sender for the
            cores it is meant to measure. The request line, keep-alive and Expect rules are the stdlib's.
            """
            if not self._parse_request_line():
                return False
            headers = _read_headers(self.rfile)
            if isinstance(headers, str):
                self.send_error(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, headers)
                return False
            self.headers = headers
            connection = headers.get("Connection", "").lower()
            if connection == "close":
                self.close_connection = True
            elif connection == "keep-alive" and self.protocol_version >= "HTTP/1.1":
                self.close_connection = False
            if headers.get("Expect", "").lower() == "100-continue" and self.request_version >= "HTTP/1.1":
                return self.handle_expect_100()
            return True

        def handle_expect_100(self) -> bool:
            """The stdlib's interim 100 Continue, flushed: the buffered wfile would hold it back, and the
            client waits for it before sending the body."""
            super().handle_expect_100()
            self.wfile.flush()
            return True

        def _parse_request_line(self) -> bool:
            """Command, path and version from the request line, answering 400 or 505 to a bad one."""
            self.command = None
            self.request_version = self.default_request_version
            self.close_connection = True
            self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
            words = self.requestline.split()
            if not words:
                return False
            version = _http_version(words[2]) if len(words) == 3 else None
            if version is None:
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({self.requestline!r})")
                return False
            self.request_version = words[2]
            if version >= (2, 0):
                self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"Invalid HTTP version ({words[2]})")
                return False
            self.close_connection = not (version >= (1, 1) and self.protocol_version >= "HTTP/1.1")
            self.command, self.path = words[0], words[1]
            if self.path.startswith("//"):
                self.path = "/" + self.path.lstrip("/")  # as the stdlib does (gh-87389)
            return True

        def _dispatch(self) -> None:
            arrived = fake.clock()
            url = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            request = Request(
                self.command,
                url.path,
                dict(self.headers.items()),
                _parse(raw, self.headers.get("Content-Type") or ""),
                arrived,
            )
            if self.command == "GET" and url.path == INTROSPECTION_PATH:
                prefix = parse_qs(url.query).get("path", [""])[0]
                self._write(Reply(200, [asdict(r) for r in fake.received(prefix)]))
                return
            reply = fake.handle(request)
            fake._record(request, reply.status)
            fake._hold_if_asked(request, reply)
            self._write(reply)

        def _write(self, reply: Reply) -> None:
            payload = b"" if reply.body is None else json.dumps(reply.body).encode()
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                if payload:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up waiting (a scripted hang)

    return Handler


def _http_version(word: str) -> tuple[int, int] | None:
    """(major, minor) of an "HTTP/x.y" word, or None if it is not one."""
    name, _, number = word.partition("/")
    major, _, minor = number.partition(".")
    if name != "HTTP" or not (major.isdigit() and minor.isdigit()) or max(len(major), len(minor)) > 10:
        return None
    return int(major), int(minor)


def _read_headers(rfile: BinaryIO) -> http.client.HTTPMessage | str:
    """The header block as the stdlib's message type, or why it is refused (a line too long, too many lines)."""
    fields: list[list[str]] = []
    for _ in range(_MAX_HEADERS + 1):
        line = rfile.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            return "Line too long"
        if line in (b"\r\n", b"\n", b""):
            headers = http.client.HTTPMessage()
            for name, value in fields:
                headers[name] = value
            return headers
        text = line.decode("iso-8859-1")
        if text[0] in " \t" and fields:  # an obsolete folded line continues the field before it
            fields[-1][1] += " " + text.strip()
        else:
            name, _, value = text.partition(":")
            fields.append([name, value.strip(" \t\r\n")])
    return "Too many headers"


def _parse(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    if "json" in content_type:
        try:
            return json.loads(text)
        except ValueError:
            return text
    if "x-www-form-urlencoded" in content_type:
        return {k: v[0] if len(v) == 1 else v for k, v in parse_qs(text).items()}
    return text
