"""HTTP/1.1 for the JSON requests of the TinyTask clients: a small client written for them over the
event loop's own transports, a few kept-alive connections, nothing else.

Why not httpx here: a request through httpx costs ~0.65 ms of CPU on the daemon's event loop, and a
run makes three. httpx layers the request through its client, httpcore's pool (which walks every
connection and every waiting request for each request) and anyio cancel scopes around every socket
operation; a client that only ever speaks JSON to one server needs none of that. Nor h11 (what this
was before): its events, header normalisation and state machine took ~180 Python calls a request
for framing that a few regular expressions over the reply's head decide here; ~0.12 ms of CPU a
request instead of ~0.23 (tests/bench/bench_http.py; docs/performance.md, "What closed the gap").
httpx still carries MCP's event streams (tinytask.mcp).

Why asyncio's transport and not an anyio stream: the daemon runs on asyncio, which keeps a connected
socket registered for reading and hands over what arrives. anyio's socket stream registers the socket
at every read, unregisters it after, and yields once more at every send: ~30 us more CPU a request
(docs/performance.md). Deadlines and cancellation are still anyio's.

What it does: one request at a time per connection, sent as one buffer; connections kept alive and
reused (one whose server closed it, or wrote to it, while idle is noticed before reuse); replies
with their body by Content-Length, chunked (extensions and trailers skipped) or until close;
informational (1xx) replies skipped; plain HTTP or TLS. One deadline, `read_timeout`, for the whole
exchange, from the first byte sent to the last byte of the reply. What it does not: proxies,
redirects, compression, cookies, HEAD, upgrades; TinyTask needs none.

Strict where a reply could mislead: a malformed status line, header field or chunk size, a
Content-Length that is not a number or disagrees with another, a transfer coding other than
chunked, a head over MAX_HEAD_BYTES or MAX_FIELDS fields fail the request; a connection is reused
only when the reply said nothing against it (HTTP/1.0, `Connection: close`, a body until close,
both Transfer-Encoding and Content-Length) and no byte came past its end (a lying Content-Length
would make those bytes the next request's reply). Failures are raised as the httpx exception types
the retry policy already knows (`ConnectError`, `ReadTimeout`, `RemoteProtocolError`, ...), so both
paths share it.
"""

from __future__ import annotations

import asyncio
import re
import select
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import anyio
import httpx

#: Received and not yet read past this, the connection stops reading from its socket until it is.
HOLD_BYTES = 256 * 1024

#: The largest reply read: a page of tasks is a few megabytes (client.PAGE_SIZE rows); a server
#: that sends more (an endless body) fails the request instead of filling the memory.
MAX_REPLY_BYTES = 64 * 1024 * 1024

#: The most the heads of one reply (status lines and header fields, informational replies
#: included), a chunk's size line, or its trailers may take; and the most header fields in a head.
MAX_HEAD_BYTES = 64 * 1024
MAX_FIELDS = 100

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
#: A field value or reason phrase: visible characters, spaces, tabs and obs-text; no CR, LF, NUL.
_TEXT = rb"[\t\x20-\x7e\x80-\xff]*"
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: (" + _TEXT + rb"))?\r?")
#: Every field line of a head (the LF of the last included); no space before the colon (RFC 9112 5.1).
_FIELDS = re.compile(rb"(?:" + _TOKEN + rb":" + _TEXT + rb"\r?\n)*")
#: The only fields that decide anything here; other fields are checked by _FIELDS, then ignored.
_FRAMING = re.compile(rb"^(content-length|transfer-encoding|connection):[ \t]*(.*?)[ \t]*\r?$", re.I | re.M)
#: The end of a head: the LF of its last line, then an empty line. A bare LF is taken for CRLF in
#: heads (RFC 9112 2.2 allows it; h11 did the same), never in the chunked framing.
_BLANK_LINE = re.compile(rb"\n\r?\n")
_OBS_FOLD = re.compile(rb"\r?\n[ \t]+")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;" + _TEXT + rb")?\r")
_REQUEST_LINE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [\x21-\x7e]+")
_REQUEST_FIELD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e]*")

#: Body framings besides a length: chunked, and until the server closes.
_CHUNKED = -1
_UNTIL_CLOSE = -2


def too_large(limit: int, what: str = "reply") -> httpx.RemoteProtocolError:
    """The error of a reply (or an MCP event) over `limit` bytes: a transport failure, retried."""
    return httpx.RemoteProtocolError(f"{what} larger than {limit / 2**20:g} MiB")


def _refused(what: str, text: bytes | bytearray | None = None) -> httpx.RemoteProtocolError:
    """A reply this client will not read (`text`: the start of the offending part): retried as any
    broken connection is."""
    return httpx.RemoteProtocolError(what if text is None else f"{what}: {bytes(text[:80])!r}")


@dataclass(frozen=True)
class Reply:
    status: int
    reason: str
    body: bytes


def _parse_head(buf: bytearray, end: re.Match[bytes]) -> tuple[int, str, int, bool]:
    """Status, reason, body framing (a length, _CHUNKED or _UNTIL_CLOSE) and whether the connection
    may carry another request, of the head that `end` (its blank line) ends at the start of `buf`."""
    line_end = buf.find(b"\n")
    status_line = _STATUS_LINE.fullmatch(buf, 0, line_end)
    if status_line is None:
        raise _refused("malformed status line", buf[:line_end])
    minor, code, reason = status_line.groups()
    fields: bytes | bytearray = buf[line_end + 1 : end.start() + 1]
    if b"\n " in fields or b"\n\t" in fields:
        fields = _OBS_FOLD.sub(b" ", fields)  # obs-fold: a user agent reads it as a space (RFC 9112 5.2)
    if _FIELDS.fullmatch(fields) is None:
        raise _bad_field(fields)
    if fields.count(b"\n") > MAX_FIELDS:
        raise _refused(f"more than {MAX_FIELDS} header fields")
    length, chunked, keep = -1, False, minor == b"1"
    for name, value in _FRAMING.findall(fields):
        name = name.lower()
        if name == b"content-length":
            length = _content_length(value, length)
        elif name == b"transfer-encoding":
            if chunked or value.lower() != b"chunked":  # chunked twice is as invalid as any other coding
                raise _refused("unsupported Transfer-Encoding", value)
            chunked = True
        elif b"close" in (token.strip(b" \t") for token in value.lower().split(b",")):
            keep = False
    status = int(code)
    text = reason.decode("latin-1") if reason else ""
    if status < 200 or status in (204, 304):
        return status, text, 0, keep
    if chunked:
        # Transfer-Encoding overrides Content-Length; both at once smells of smuggling: do not reuse.
        return status, text, _CHUNKED, keep and length < 0
    if length < 0:
        return status, text, _UNTIL_CLOSE, False
    return status, text, length, keep


def _content_length(value: bytes, known: int) -> int:
    """The length a Content-Length value gives (a list of equal values is one); `known`: the length an
    earlier Content-Length field gave, or -1."""
    if not value.isdigit():  # ASCII digits only: no sign, no space, not empty
        values = {part.strip(b" \t") for part in value.split(b",")}
        if len(values) != 1 or not (single := values.pop()).isdigit():
            raise _refused("invalid or conflicting Content-Length", value)
        value = single
    # Beyond 18 digits it is over any cap (and int() refuses thousands of them).
    length = int(value) if len(value) <= 18 else MAX_REPLY_BYTES + 1
    if 0 <= known != length:
        raise _refused(f"conflicting Content-Length values {known} and {length}")
    return length


def _bad_field(fields: bytes | bytearray) -> httpx.RemoteProtocolError:
    """The error of a head whose field lines do not all match _FIELDS, naming the first bad one."""
    lines = fields.split(b"\n")
    return _refused("malformed header field", next((x for x in lines if not _FIELDS.fullmatch(x + b"\n")), fields))


class _Wire(asyncio.Protocol):
    """A connection's socket as the event loop delivers it: what arrived, held until it is read."""

    def __init__(self) -> None:
        self.transport = cast(asyncio.Transport, None)
        self._held: deque[bytes] = deque()
        self._held_bytes = 0
        #: The server closed its side, or the connection broke: nothing more will arrive.
        self.ended = False
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._held.append(data)
        self._held_bytes += len(data)
        if self._held_bytes > HOLD_BYTES:
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.ended = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def holds_news(self) -> bool:
        """Whether anything arrived, or the connection ended, since the last read."""
        return self.ended or bool(self._held)

    async def send(self, data: bytes) -> None:
        if self.ended or self.transport.is_closing():
            raise httpx.WriteError("the connection was closed")
        self.transport.write(data)
        if self._writable is not None:  # the socket's buffer is full: wait until it drains
            await self._writable
            if self.ended:
                raise httpx.WriteError("the connection was closed")

    async def receive(self) -> bytes:
        """What arrived since the last read, waiting for it if nothing has; b"" at the end."""
        if not self._held and not self.ended:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if not self._held:
            return b""
        data = self._held.popleft() if len(self._held) == 1 else b"".join(self._held)
        self._held.clear()
        if self._held_bytes > HOLD_BYTES and not self.ended:
            self.transport.resume_reading()
        self._held_bytes = 0
        return data


class _Connection:
    def __init__(self, wire: _Wire, read_timeout: float) -> None:
        self.wire = wire
        #: The most a request may take, from its first byte sent to the last byte of its reply: a
        #: server that drips its reply a byte at a time cannot hold a request (a pass, a claim)
        #: for longer.
        self.read_timeout = read_timeout
        #: Received and not yet parsed: after a reply, anything here came past its end.
        self._buf = bytearray()
        self._reusable = False
        #: Registered once: each reuse costs one poll() of this socket. What the loop has not read
        #: yet (a close that came while the daemon was busy) shows there, not in the wire.
        self._poller = select.poll()
        self._poller.register(wire.transport.get_extra_info("socket").fileno(), select.POLLIN)

    def closed_by_server(self) -> bool:
        """An idle kept-alive connection that the server closed (or wrote to)."""
        return self.wire.holds_news() or bool(self._poller.poll(0))

    def close(self) -> None:
        # At once, whatever is unsent: a connection is closed after a failure, or when idle.
        self.wire.transport.abort()

    def reusable(self) -> bool:
        """Whether the next request may use this connection: the last reply allowed it, and nothing
        was sent past that reply (bytes a lying Content-Length left over would be read as the next
        request's reply)."""
        return self._reusable and not self._buf

    async def exchange(self, request: bytes) -> Reply:
        # One cancel scope for the whole exchange, not one per socket operation: entering and
        # leaving one costs more than the parsing of a small reply.
        sent = False
        self._reusable = False
        with anyio.CancelScope(deadline=anyio.current_time() + self.read_timeout):
            await self.wire.send(request)
            sent = True
            return await self._receive()
        # Only the scope's own deadline ends the block without a return or an exception.
        if sent:
            raise httpx.ReadTimeout("timed out waiting for the reply")
        raise httpx.WriteTimeout("timed out sending the request")

    async def _receive(self) -> Reply:
        budget = MAX_HEAD_BYTES
        while True:
            end = await self._head(budget)
            status, reason, framing, keep = _parse_head(self._buf, end)
            del self._buf[: end.end()]
            if status >= 200:
                break
            if status == 101:
                raise _refused("unexpected 101 Switching Protocols: no upgrade was asked for")
            budget -= end.end()  # an informational reply: the final one follows
        if framing >= 0:
            body = await self._sized(framing)
        elif framing == _CHUNKED:
            body = await self._chunked()
        else:
            body = await self._until_close()
        self._reusable = keep
        return Reply(status, reason, body)

    async def _fill(self) -> bool:
        """Append the next read to the buffer; False at the end of the stream."""
        data = await self.wire.receive()
        self._buf += data
        return bool(data)

    async def _more(self) -> None:
        """The next read of a body the server has not finished."""
        if not await self._fill():
            raise httpx.RemoteProtocolError("Server disconnected before the end of the reply.")

    async def _head(self, budget: int) -> re.Match[bytes]:
        """The blank line that ends the head at the start of the buffer, read up to `budget` bytes."""
        buf = self._buf
        scan = 0
        while (end := _BLANK_LINE.search(buf, scan)) is None:
            if len(buf) > budget:
                break
            scan = max(0, len(buf) - 2)  # a blank line may begin in what is already here
            if not await self._fill():
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        if end is None or end.end() > budget:
            raise _refused(f"reply head larger than {MAX_HEAD_BYTES // 1024} KiB")
        return end

    async def _sized(self, length: int) -> bytes:
        if length > MAX_REPLY_BYTES:
            raise too_large(MAX_REPLY_BYTES)
        buf = self._buf
        while len(buf) < length:
            await self._more()
        if len(buf) == length:
            body = bytes(buf)
            buf.clear()
            return body
        body = bytes(buf[:length])
        del buf[:length]
        return body

    async def _chunked(self) -> bytes:
        buf = self._buf
        chunks: list[bytes] = []
        size = 0
        while True:
            while (line_end := buf.find(b"\n")) < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise _refused("chunk size line too long", buf)
                await self._more()
            header = _CHUNK_SIZE.fullmatch(buf, 0, line_end)
            if header is None:
                raise _refused("bad chunk size line", buf[:line_end])
            length = int(header[1], 16)
            del buf[: line_end + 1]
            if length == 0:
                await self._trailers()
                return b"".join(chunks)
            size += length
            if size > MAX_REPLY_BYTES:
                raise too_large(MAX_REPLY_BYTES)
            while len(buf) < length + 2:
                await self._more()
            if buf[length : length + 2] != b"\r\n":
                raise _refused("chunk data not followed by CRLF", buf[length : length + 2])
            chunks.append(bytes(buf[:length]))
            del buf[: length + 2]

    async def _trailers(self) -> None:
        """Skip the trailer fields after the last chunk, up to the empty line that ends the body."""
        buf = self._buf
        while True:
            if buf[:2] == b"\r\n":
                del buf[:2]
                return
            end = _BLANK_LINE.search(buf)
            if end is not None:
                if _FIELDS.fullmatch(buf, 0, end.start() + 1) is None:
                    raise _refused("malformed trailer field", buf[: end.start()])
                del buf[: end.end()]
                return
            if len(buf) > MAX_HEAD_BYTES:
                raise _refused(f"trailers larger than {MAX_HEAD_BYTES // 1024} KiB")
            await self._more()

    async def _until_close(self) -> bytes:
        buf = self._buf
        while await self._fill():
            if len(buf) > MAX_REPLY_BYTES:
                raise too_large(MAX_REPLY_BYTES)
        body = bytes(buf)
        buf.clear()
        return body


class Http11:
    """A few kept-alive HTTP/1.1 connections to one server, for JSON requests."""

    def __init__(self, base_url: str, *, connect_timeout: float, read_timeout: float, max_connections: int) -> None:
        parts = urlsplit(base_url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/")
        default_port = self.port == (443 if self.tls else 80)
        self.authority = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host:
            self.authority = f"[{self.host}]" if default_port else f"[{self.host}]:{self.port}"
        #: The fields every request starts with; a host that cannot be sent is refused by each request.
        self._fields = f"Host: {self.authority}\r\nAccept: application/json\r\nUser-Agent: tinyscheduler\r\n"
        self._host_ok = _REQUEST_FIELD.fullmatch(f"Host:{self.authority}") is not None
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: list[_Connection] = []
        # fast_acquire: a free turn is taken without a trip through the event loop (one loop
        # iteration a request, ~20 us of CPU); the request yields at its send and its reads anyway.
        self._turns = anyio.Semaphore(max_connections, fast_acquire=True)
        self._ssl: ssl.SSLContext | None = None

    async def request(
        self, method: str, target: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Reply:
        """`target`: the path and query below the base URL. Raises httpx's exception types."""
        data = self._encode(method, target, body, headers)
        async with self._turns:
            connection = await self._connection()
            try:
                reply = await connection.exchange(data)
            except BaseException:
                connection.close()
                raise
            if connection.reusable():
                self._idle.append(connection)
            else:
                connection.close()
            return reply

    def _encode(self, method: str, target: str, body: bytes | None, headers: Mapping[str, str] | None) -> bytes:
        """The request as the one buffer sent; a method, target or field that could not be sent as
        it is (a space, a line break: another request smuggled in) is refused."""
        line = f"{method} {self.prefix}{target}"
        if _REQUEST_LINE.fullmatch(line) is None or not self._host_ok:
            raise httpx.LocalProtocolError(f"cannot send {line!r:.100} to {self.authority!r:.100}")
        head = f"{line} HTTP/1.1\r\n{self._fields}"
        for name, value in (headers or {}).items():
            if _REQUEST_FIELD.fullmatch(f"{name}:{value}") is None:
                raise httpx.LocalProtocolError(f"cannot send the header field {name!r:.100}")
            head += f"{name}: {value}\r\n"
        if body is None:
            return f"{head}\r\n".encode("ascii")
        return f"{head}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode("ascii") + body

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed_by_server():
                return connection
            connection.close()
        context, hostname = (self._context(), self.host) if self.tls else (None, None)
        try:
            with anyio.fail_after(self.connect_timeout):
                _, wire = await asyncio.get_running_loop().create_connection(
                    _Wire, self.host, self.port, ssl=context, server_hostname=hostname
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {self.authority} within {self.connect_timeout:g}s") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from None
        return _Connection(wire, self.read_timeout)

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl
