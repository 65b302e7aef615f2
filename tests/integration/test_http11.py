"""The HTTP/1.1 reader and writer of the JSON requests (tinytask._http11), byte by byte: a raw socket
server on 127.0.0.1 sends exact replies, split where each test says, and the client's reads are
counted so that the server sends a piece only once the client has read everything before it (each
piece is then a read of its own, without a sleep)."""

from __future__ import annotations

import contextlib
import itertools
import socket
import socketserver
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import httpx
import pytest

from tinyscheduler.adapters.tinytask import _http11
from tinyscheduler.adapters.tinytask._http11 import Http11, Reply

from runbench import eventually


@dataclass(frozen=True)
class Turn:
    """The answer to one request: `pieces` in order, then the connection closed if `close`. Each piece
    goes once the client has read all sent before it, or `pace` seconds after the last (a drip)."""

    pieces: tuple[bytes, ...]
    close: bool = False
    pace: float = 0.0


def turn(reply: bytes, *, at: tuple[int, ...] = (), close: bool = False) -> Turn:
    """`reply` cut at the offsets `at`."""
    cuts = (0, *at, len(reply))
    return Turn(tuple(reply[a:b] for a, b in itertools.pairwise(cuts)), close=close)


class RawScript:
    """A socket server answering each request with the next Turn (the last one repeats)."""

    def __init__(self, *turns: Turn) -> None:
        self.turns = list(turns)
        self.requests: list[bytes] = []
        self.connections = 0
        self.closes = 0
        #: Bytes handed to the socket by the server and read by the client so far, for the pieces' hand-over.
        self.sent = 0
        self.read = 0
        #: The size of each of the client's reads.
        self.reads: list[int] = []
        self.progress = threading.Condition()
        self.stopped = threading.Event()
        self.sockets: list[socket.socket] = []
        script = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                script.serve(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        self.stopped.set()
        with self.progress:
            self.progress.notify_all()
        self.server.shutdown()
        self.server.server_close()
        for sock in self.sockets:  # a connection kept alive would keep its handler reading
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)

    def client_read(self, data: bytes) -> None:
        with self.progress:
            self.read += len(data)
            self.reads.append(len(data))
            self.progress.notify_all()

    def serve(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a piece goes at once, not after an ACK
        with self.progress:
            self.connections += 1
            self.sockets.append(sock)
        with sock.makefile("rb") as reader:
            while (request := read_request(reader)) is not None:
                with self.progress:
                    self.requests.append(request)
                    answer = self.turns.pop(0) if len(self.turns) > 1 else self.turns[0]
                try:
                    self.send(sock, answer)
                except OSError:
                    return  # the client refused the reply and closed
                if answer.close:
                    sock.shutdown(socket.SHUT_WR)
                    with self.progress:
                        self.closes += 1
                        self.progress.notify_all()
                    return

    def send(self, sock: socket.socket, answer: Turn) -> None:
        for number, piece in enumerate(answer.pieces):
            if answer.pace and self.stopped.wait(answer.pace):
                return
            with self.progress:  # counted before it goes, so the client can never have read more than this
                self.sent += len(piece)
            sock.sendall(piece)
            if not answer.pace and number + 1 < len(answer.pieces):
                with self.progress:
                    self.progress.wait_for(lambda: self.read >= self.sent or self.stopped.is_set(), timeout=10)

    def wait_closes(self, count: int) -> None:
        with self.progress:
            assert self.progress.wait_for(lambda: self.closes >= count, timeout=10)


def read_request(reader: BinaryIO) -> bytes | None:
    """One request, head and body, as the bytes received; None once the client closed."""
    head = reader.readline()
    if not head:
        return None
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        head += line
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + b"\r\n" + reader.read(length)


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., RawScript]]:
    """Start a RawScript (stopped after the test, whatever happens); the client's connections to it
    report their reads to it."""
    started: list[RawScript] = []
    receive = _http11._Wire.receive

    async def counted(wire: _http11._Wire) -> bytes:
        data = await receive(wire)
        if data:
            started[-1].client_read(data)
        return data

    def start(*turns: Turn) -> RawScript:
        started.append(RawScript(*turns))
        return started[-1]

    monkeypatch.setattr(_http11._Wire, "receive", counted)
    try:
        yield start
    finally:
        for script in started:
            script.stop()


@contextlib.asynccontextmanager
async def client(url: str, *, read_timeout: float = 10.0) -> AsyncIterator[Http11]:
    http = Http11(url, connect_timeout=5.0, read_timeout=read_timeout, max_connections=1)
    try:
        yield http
    finally:
        await http.aclose()


def head(*fields: str, status: str = "HTTP/1.1 200 OK") -> bytes:
    return "".join(f"{line}\r\n" for line in (status, *fields)).encode("latin-1") + b"\r\n"


JSON = b'["dev", "qa"]'
SIZED = head("Content-Type: application/json", f"Content-Length: {len(JSON)}") + JSON
CHUNKED = (
    head("Transfer-Encoding: chunked")
    + b'4;name=value\r\n["de\r\n5\r\nv", "\r\n3 ; ext\r\nqa"\r\n1\r\n]\r\n'
    + b"0\r\nX-Trailer: 1\r\nX-Other: two\r\n\r\n"
)
INFORMATIONAL = head(status="HTTP/1.1 100 Continue") + head("Link: </x>", status="HTTP/1.1 103 Early Hints") + SIZED


# --- replies read whole, however they are split ------------------------------------------------


@pytest.mark.parametrize("reply", [SIZED, CHUNKED, INFORMATIONAL], ids=["content-length", "chunked", "1xx-first"])
async def test_a_reply_split_at_any_byte_is_read_whole_and_its_connection_reused(
    serve: Callable[..., RawScript], reply: bytes
) -> None:
    script = serve(*(turn(reply, at=(cut,)) for cut in range(1, len(reply))))
    async with client(script.url) as http:
        for _ in range(1, len(reply)):
            assert await http.request("GET", "/api/v1/queues") == Reply(200, "OK", JSON)
    assert script.read == script.sent == len(reply) * (len(reply) - 1)
    assert script.connections == 1, "each reply was read to its last byte, and no further"


@pytest.mark.parametrize("reply", [SIZED, CHUNKED, INFORMATIONAL], ids=["content-length", "chunked", "1xx-first"])
async def test_a_reply_sent_a_byte_at_a_time_is_read_whole(serve: Callable[..., RawScript], reply: bytes) -> None:
    script = serve(turn(reply, at=tuple(range(1, len(reply)))))
    async with client(script.url) as http:
        assert await http.request("GET", "/api/v1/queues") == Reply(200, "OK", JSON)
        assert await http.request("GET", "/api/v1/queues") == Reply(200, "OK", JSON)
    assert script.reads == [1] * len(reply) * 2
    assert script.connections == 1


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (head("Content-Length: 13, 13") + JSON, Reply(200, "OK", JSON)),
        (head("Content-Length: 13", "content-LENGTH: 13") + JSON, Reply(200, "OK", JSON)),
        (head("Transfer-Encoding: Chunked") + b"d\r\n" + JSON + b"\r\n0\r\n\r\n", Reply(200, "OK", JSON)),
        (b"HTTP/1.1 200 OK\nContent-Length: 13\n\n" + JSON, Reply(200, "OK", JSON)),
        (head("X-Folded: one", " two", "Content-Length: 13") + JSON, Reply(200, "OK", JSON)),
        (head("Content-Length: 0", status="HTTP/1.1 200") + JSON[:0], Reply(200, "", b"")),
        (
            head("Content-Length: 2", status="HTTP/1.1 404 Nicht gefunden \xfc") + b"{}",
            Reply(404, "Nicht gefunden \xfc", b"{}"),
        ),
        (head("Content-Length: 13", "X-Empty:", "X-Spaces:  a b  ") + JSON, Reply(200, "OK", JSON)),
        (head(*(f"X-{n}: {n}" for n in range(99)), "Content-Length: 13") + JSON, Reply(200, "OK", JSON)),
        (head("Content-Length: 13", status="HTTP/1.1 204 No Content"), Reply(204, "No Content", b"")),
        (head("ETag: x", status="HTTP/1.1 304 Not Modified"), Reply(304, "Not Modified", b"")),
    ],
    ids=[
        "equal-length-list",
        "equal-length-fields",
        "chunked-any-case",
        "bare-lf-head",
        "obs-fold",
        "no-reason",
        "latin-1-reason",
        "empty-and-spaced-values",
        "100-fields",
        "204-ignores-length",
        "304",
    ],
)
async def test_valid_replies_in_less_common_spellings_are_read(
    serve: Callable[..., RawScript], reply: bytes, expected: Reply
) -> None:
    script = serve(turn(reply))
    async with client(script.url) as http:
        assert await http.request("GET", "/x") == expected
        assert await http.request("GET", "/x") == expected
    assert script.connections == 1


# --- when a connection is used again -----------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "server_closes"),
    [
        (head("Connection: close", "Content-Length: 13") + JSON, False),
        (head("Connection: keep-alive, Close", "Content-Length: 13") + JSON, False),
        (head("Content-Length: 13", status="HTTP/1.0 200 OK") + JSON, False),
        (head("Connection: keep-alive", "Content-Length: 13", status="HTTP/1.0 200 OK") + JSON, False),
        (head("Content-Type: application/json") + JSON, True),
        (head("Transfer-Encoding: chunked", "Content-Length: 13") + b"d\r\n" + JSON + b"\r\n0\r\n\r\n", False),
        (SIZED + b'HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n["forged"]', False),
        (SIZED + b"\r\n", False),
        (CHUNKED + b"\r\n", False),
    ],
    ids=[
        "connection-close",
        "close-in-a-list",
        "http-1.0",
        "http-1.0-keep-alive",
        "body-until-close",
        "te-and-cl",
        "a-reply-past-the-reply",
        "one-byte-past-the-length",
        "bytes-past-the-last-chunk",
    ],
)
async def test_a_connection_is_not_reused_when_the_reply_says_so_or_bytes_came_past_it(
    serve: Callable[..., RawScript], reply: bytes, server_closes: bool
) -> None:
    # The server keeps the connection open unless its body runs until it closes: not reusing it is
    # the client's decision.
    script = serve(turn(reply, close=server_closes))
    async with client(script.url) as http:
        for _ in range(3):
            answer = await http.request("GET", "/x")
            assert (answer.status, answer.body) == (200, JSON)
    assert script.connections == 3


async def test_an_idle_connection_the_server_closed_is_noticed_before_reuse(serve: Callable[..., RawScript]) -> None:
    script = serve(turn(SIZED, close=True))
    async with client(script.url) as http:
        for number in range(1, 4):
            assert await http.request("GET", "/x") == Reply(200, "OK", JSON)
            script.wait_closes(number)
    assert script.connections == 3


async def test_a_server_flooding_an_idle_connection_fills_a_bounded_buffer_and_loses_it(
    serve: Callable[..., RawScript],
) -> None:
    """8 MiB sent after a reply, while the connection waits for its next request: the client holds
    at most HOLD_BYTES (plus one read) and stops reading; the next request goes on a new connection."""
    script = serve(Turn((SIZED, b"x" * (8 << 20))), turn(SIZED))
    async with client(script.url) as http:
        assert await http.request("GET", "/x") == Reply(200, "OK", JSON)
        wire = http._idle[0].wire
        await eventually(lambda: not wire.transport.is_reading(), what="the idle connection to stop reading")
        assert _http11.HOLD_BYTES < wire._held_bytes <= _http11.HOLD_BYTES + 256 * 1024
        assert await http.request("GET", "/x") == Reply(200, "OK", JSON)
    assert script.connections == 2


# --- replies refused ---------------------------------------------------------------------------

MALFORMED = {
    "head-over-64-KiB": (head("X-Big: " + "a" * 70_000, "Content-Length: 0"), "reply head larger than 64 KiB"),
    "head-without-end": (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000, "reply head larger than 64 KiB"),
    "101-fields": (head(*(f"X-{n}: {n}" for n in range(100)), "Content-Length: 0"), "more than 100 header fields"),
    "status-4-digits": (head("Content-Length: 0", status="HTTP/1.1 2000 OK"), "malformed status line"),
    "http-2": (head("Content-Length: 0", status="HTTP/2 200 OK"), "malformed status line"),
    "not-http": (head("Content-Length: 0", status="ICY 200 OK"), "malformed status line"),
    "cr-in-reason": (head("Content-Length: 0", status="HTTP/1.1 200 O\rK"), "malformed status line"),
    "negative-length": (head("Content-Length: -1"), r"invalid or conflicting Content-Length: b'-1'"),
    "non-numeric-length": (head("Content-Length: 12a"), r"invalid or conflicting Content-Length: b'12a'"),
    "empty-length": (head("Content-Length:"), r"invalid or conflicting Content-Length: b''"),
    "two-lengths": (
        head("Content-Length: 5", "Content-Length: 6") + b"12345",
        "conflicting Content-Length values 5 and 6",
    ),
    "length-list": (head("Content-Length: 5, 6") + b"12345", r"invalid or conflicting Content-Length: b'5, 6'"),
    "gzip": (head("Transfer-Encoding: gzip"), r"unsupported Transfer-Encoding: b'gzip'"),
    "gzip-chunked": (head("Transfer-Encoding: gzip, chunked"), r"unsupported Transfer-Encoding: b'gzip, chunked'"),
    "chunked-twice": (
        head("Transfer-Encoding: chunked", "Transfer-Encoding: chunked"),
        "unsupported Transfer-Encoding",
    ),
    "bad-chunk-size": (head("Transfer-Encoding: chunked") + b"zz\r\n", r"bad chunk size line: b'zz\\r'"),
    "chunk-size-17-digits": (head("Transfer-Encoding: chunked") + b"1" * 17 + b"\r\n", "bad chunk size line"),
    "chunk-size-bare-lf": (head("Transfer-Encoding: chunked") + b"2\n[]\r\n0\r\n\r\n", "bad chunk size line"),
    "chunk-without-crlf": (head("Transfer-Encoding: chunked") + b"2\r\n[]]\r\n0\r\n\r\n", "chunk data not followed"),
    "chunk-line-over-64-KiB": (head("Transfer-Encoding: chunked") + b"2;" + b"x" * 70_000, "chunk size line too long"),
    "bad-trailer": (head("Transfer-Encoding: chunked") + b"0\r\nBad trailer\r\n\r\n", "malformed trailer field"),
    "space-before-colon": (head("Content-Length : 0"), r"malformed header field: b'Content-Length : 0\\r'"),
    "nul-in-value": (head("X-A: a\0b", "Content-Length: 0"), "malformed header field"),
    "fold-first-line": (head(" X-A: b", "Content-Length: 0"), "malformed header field"),
    "101": (head("Upgrade: h2c", status="HTTP/1.1 101 Switching Protocols"), "unexpected 101 Switching Protocols"),
    "closed-at-once": (b"", "Server disconnected without sending a response."),
    "closed-in-the-head": (b"HTTP/1.1 200 OK\r\nContent-Le", "Server disconnected without sending a response."),
    "closed-in-the-body": (head("Content-Length: 13") + JSON[:5], "Server disconnected before the end of the reply."),
    "closed-in-a-chunk": (
        head("Transfer-Encoding: chunked") + b"d\r\n" + JSON[:5],
        "Server disconnected before the end",
    ),
}


@pytest.mark.parametrize(("reply", "said"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_reply_is_a_protocol_error_and_its_connection_dropped(
    serve: Callable[..., RawScript], reply: bytes, said: str
) -> None:
    script = serve(turn(reply, close=True), turn(SIZED))
    async with client(script.url) as http:
        with pytest.raises(httpx.RemoteProtocolError, match=said):
            await http.request("GET", "/x")
        assert await http.request("GET", "/x") == Reply(200, "OK", JSON)
    assert script.connections == 2


# --- the single deadline and the cap -----------------------------------------------------------


async def test_a_dripping_reply_hits_the_one_deadline_of_the_request(serve: Callable[..., RawScript]) -> None:
    # Each byte comes 20 ms after the last, far within any per-read timeout; the reply would take
    # ~1.4 s, the request gets 0.3 s in all.
    script = serve(Turn(tuple(bytes([b]) for b in SIZED), pace=0.02))
    async with client(script.url, read_timeout=0.3) as http:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout, match="timed out waiting for the reply"):
            await http.request("GET", "/x")
        assert 0.3 <= time.monotonic() - started < 1.0


async def test_a_request_the_server_never_reads_is_a_write_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # connections wait in its backlog, unread
        port = listener.getsockname()[1]
        async with client(f"http://127.0.0.1:{port}", read_timeout=0.3) as http:
            started = time.monotonic()
            with pytest.raises(httpx.WriteTimeout, match="timed out sending the request"):
                await http.request("PATCH", "/x", body=b" " * (32 << 20))
            assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    "answer",
    [
        Turn((head("Content-Length: 2097152"),)),  # refused on its head: no body is ever sent
        Turn((head("Transfer-Encoding: chunked"), *[b"40000\r\n" + b" " * 0x40000 + b"\r\n"] * 8)),
        Turn((head("Content-Type: application/json"), b" " * (2 << 20))),  # until close, never closed
    ],
    ids=["content-length", "chunked", "until-close"],
)
async def test_a_reply_over_the_cap_is_refused_as_it_comes(
    serve: Callable[..., RawScript], monkeypatch: pytest.MonkeyPatch, answer: Turn
) -> None:
    monkeypatch.setattr(_http11, "MAX_REPLY_BYTES", 1 << 20)
    script = serve(Turn(answer.pieces, pace=0.001))  # paced: the client need not read what it refuses
    async with client(script.url) as http:
        with pytest.raises(httpx.RemoteProtocolError, match="reply larger than 1 MiB"):
            await http.request("GET", "/x")


# --- the request -------------------------------------------------------------------------------


async def test_a_request_is_sent_as_one_exact_buffer(serve: Callable[..., RawScript]) -> None:
    script = serve(turn(SIZED))
    async with client(script.url + "/base/") as http:
        await http.request("PATCH", "/api/v1/tasks/7", body=b'{"status": "working"}', headers={"X-Trace": "a b"})
        await http.request("GET", "/api/v1/tasks?limit=5&offset=0")
    authority = script.url.removeprefix("http://")
    assert script.requests == [
        f"PATCH /base/api/v1/tasks/7 HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\n"
        "User-Agent: tinyscheduler\r\nX-Trace: a b\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n"
        '{"status": "working"}'.encode(),
        f"GET /base/api/v1/tasks?limit=5&offset=0 HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\n"
        "User-Agent: tinyscheduler\r\n\r\n".encode(),
    ]


@pytest.mark.parametrize(
    ("target", "headers"),
    [("/a b", {}), ("/a\r\nX: 1", {}), ("/é", {}), ("/x", {"X-A": "1\r\nX-B: 2"}), ("/x", {"X A": "1"})],
    ids=["space-in-target", "crlf-in-target", "non-ascii-target", "crlf-in-value", "space-in-name"],
)
async def test_a_request_that_cannot_be_sent_as_it_is_is_refused_before_connecting(
    serve: Callable[..., RawScript], target: str, headers: dict[str, str]
) -> None:
    script = serve(turn(SIZED))
    async with client(script.url) as http:
        with pytest.raises(httpx.LocalProtocolError, match="cannot send"):
            await http.request("GET", target, headers=headers)
    assert script.connections == 0
