"""The fakes' HTTP layer on the wire: its own header parser keeps the stdlib's request rules and keep-alive.

Raw sockets say exactly what a client sends, including what no SDK would: folded headers, bad request lines,
oversized header blocks. The FCM fake serves; any FakeServer parses alike.
"""

import socket
from collections.abc import Iterator

import pytest

from engine.fakes import FakeFcm
from tests.fcm_fake import fresh_fcm_record, module_fake_fcm  # noqa: F401 (fixtures)

TOKEN_REQUEST = "POST /token HTTP/1.1\r\nHost: fake\r\nContent-Length: 0\r\n"


@pytest.fixture
def connection(fake: FakeFcm) -> Iterator[socket.socket]:
    with socket.create_connection(("127.0.0.1", int(fake.url.rsplit(":", 1)[1])), timeout=5) as sock:
        yield sock


def exchange(sock: socket.socket, request: str) -> tuple[int, dict[str, str], bytes]:
    """Send one request, read one whole answer: status, headers (lower-cased names), body."""
    sock.sendall(request.encode("latin-1"))
    reader = sock.makefile("rb")
    status = int(reader.readline().split()[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    reader.close()
    return status, headers, body


def closed_by_server(sock: socket.socket) -> bool:
    return sock.recv(1) == b""


def test_many_requests_share_one_connection_each_answer_sized(fake: FakeFcm, connection: socket.socket) -> None:
    answers = [exchange(connection, TOKEN_REQUEST + "\r\n") for _ in range(3)]

    assert [status for status, _, _ in answers] == [400, 400, 400]  # no grant_type: refused, but answered
    assert all(int(headers["content-length"]) == len(body) > 0 for _, headers, body in answers)
    assert len(fake.received("/token")) == 3


def test_header_names_are_case_insensitive_and_recorded_as_sent(fake: FakeFcm, connection: socket.socket) -> None:
    lower_case = "POST /token HTTP/1.1\r\nhost: fake\r\ncontent-length: 2\r\nX-Custom-Thing:   spaced  \r\n\r\n{}"

    exchange(connection, lower_case)

    [request] = fake.received("/token")
    assert request.body == "{}", "the body is read whatever the case of Content-Length"
    assert request.headers == {"host": "fake", "content-length": "2", "X-Custom-Thing": "spaced"}


def test_a_hundred_headers_are_still_accepted(fake: FakeFcm, connection: socket.socket) -> None:
    extra = "".join(f"X-{i}: {i}\r\n" for i in range(97))  # with Host, Content-Length and X-Last: 100

    status, _, _ = exchange(connection, TOKEN_REQUEST + extra + "X-Last: 1\r\n\r\n")

    assert status == 400 and len(fake.received("/token")) == 1


def test_a_folded_header_line_continues_the_one_before(fake: FakeFcm, connection: socket.socket) -> None:
    exchange(connection, TOKEN_REQUEST + "X-Folded: first\r\n  second\r\n\r\n")

    [request] = fake.received("/token")
    assert request.headers["X-Folded"] == "first second"


def test_connection_close_is_honoured(connection: socket.socket) -> None:
    status, _, _ = exchange(connection, TOKEN_REQUEST + "Connection: close\r\n\r\n")

    assert status == 400 and closed_by_server(connection)


def test_an_http_1_0_client_gets_its_connection_closed(connection: socket.socket) -> None:
    status, _, _ = exchange(connection, TOKEN_REQUEST.replace("HTTP/1.1", "HTTP/1.0") + "\r\n")

    assert status == 400 and closed_by_server(connection)


def test_expect_100_continue_gets_its_interim_answer(fake: FakeFcm, connection: socket.socket) -> None:
    head = "POST /token HTTP/1.1\r\nHost: fake\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    connection.sendall(head.encode())
    reader = connection.makefile("rb")

    interim = reader.readline()
    reader.readline()
    connection.sendall(b"{}")
    final = reader.readline()

    reader.close()
    assert interim.startswith(b"HTTP/1.1 100") and final.startswith(b"HTTP/1.1 400")
    assert len(fake.received("/token")) == 1


@pytest.mark.parametrize(
    ("request_text", "status"),
    [
        ("NONSENSE\r\n\r\n", 400),
        ("POST /token HTTP/one\r\n\r\n", 400),
        ("POST /token HTTP/2.0\r\n\r\n", 505),
        (TOKEN_REQUEST + "X-Long: " + "a" * 65_529, 431),  # 65,537 bytes, all read: no reset of unread data
        (TOKEN_REQUEST + "".join(f"X-{i}: {i}\r\n" for i in range(101)) + "\r\n", 431),
    ],
    ids=["no-version", "bad-version", "http-2", "line-too-long", "too-many-headers"],
)
def test_a_malformed_request_is_refused_and_not_recorded(
    fake: FakeFcm, connection: socket.socket, request_text: str, status: int
) -> None:
    """As the stdlib does, a request line without a usable version is answered HTTP/0.9-style: no status line."""
    connection.sendall(request_text.encode())
    with connection.makefile("rb") as reader:
        answer = reader.read()  # to the end: the server closes the connection

    assert f"Error code: {status}".encode() in answer
    assert fake.received() == []
