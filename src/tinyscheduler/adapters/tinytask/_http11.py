"""HTTP/1.1 for the JSON requests of the TinyTask clients: h11 over anyio streams, a few kept-alive
connections, nothing else.

Why not httpx here: a request through httpx costs ~0.65 ms of CPU on the daemon's event loop, over
0.2 ms through this (measured on 127.0.0.1; docs/performance.md, "One run"), and a run makes three.
httpx layers the request through its client, httpcore's pool (which walks every connection and every
waiting request for each request) and anyio cancel scopes around every socket operation; a client
that only ever speaks JSON to one server needs none of that. httpx still carries MCP's event
streams (tinytask.mcp).

What it does: one request at a time per connection, connections kept alive and reused (one whose
server closed it while idle is noticed before reuse: it reads as ready), bodies by Content-Length,
chunked or until close, plain HTTP or TLS. What it does not: proxies, redirects, compression,
cookies; TinyTask needs none. Its failures are raised as the httpx exception types the retry policy
already knows (`ConnectError`, `ReadTimeout`, `RemoteProtocolError`, ...), so both paths share it.
"""

from __future__ import annotations

import contextlib
import select
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import anyio.abc
import h11
import httpx

#: Read at most this much at once from a socket.
RECEIVE_BYTES = 256 * 1024

#: The largest reply read: a page of tasks is a few megabytes (client.PAGE_SIZE rows); a server
#: that sends more (an endless body) fails the request instead of filling the memory.
MAX_REPLY_BYTES = 64 * 1024 * 1024


def too_large(limit: int, what: str = "reply") -> httpx.RemoteProtocolError:
    """The error of a reply (or an MCP event) over `limit` bytes: a transport failure, retried."""
    return httpx.RemoteProtocolError(f"{what} larger than {limit / 2**20:g} MiB")


@dataclass(frozen=True)
class Reply:
    status: int
    reason: str
    body: bytes


class _Connection:
    def __init__(self, stream: anyio.abc.ByteStream, read_timeout: float) -> None:
        self.stream = stream
        #: The most a request may take, from its first byte sent to the last byte of its reply: a
        #: server that drips its reply a byte at a time, each within any per-read timeout, cannot
        #: hold a request (a pass, a claim) for longer.
        self.read_timeout = read_timeout
        self._deadline = 0.0
        self.h11 = h11.Connection(h11.CLIENT)
        raw = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        #: Registered once: each reuse costs one poll() of this socket.
        self._poller: select.poll | None = None
        if raw is not None:
            self._poller = select.poll()
            self._poller.register(raw.fileno(), select.POLLIN)

    def closed_by_server(self) -> bool:
        """An idle kept-alive connection that the server closed (or wrote to) reads as ready."""
        return self._poller is not None and bool(self._poller.poll(0))

    async def exchange(self, request: list[h11.Event]) -> Reply:
        data = b"".join(self.h11.send(event) or b"" for event in request)
        self._deadline = anyio.current_time() + self.read_timeout
        try:
            with anyio.fail_after(self.read_timeout):
                await self.stream.send(data)
        except TimeoutError:
            raise httpx.WriteTimeout("timed out sending the request") from None
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__) from None
        return await self._receive()

    async def _receive(self) -> Reply:
        status, reason, chunks, size = 0, "", [], 0
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(str(exc)) from None
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self._read(started=status != 0))
            elif isinstance(event, h11.Response):
                status, reason = event.status_code, event.reason.decode("latin-1")
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
                size += len(event.data)
                if size > MAX_REPLY_BYTES:
                    raise too_large(MAX_REPLY_BYTES)
            elif isinstance(event, h11.EndOfMessage):
                return Reply(status, reason, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    async def _read(self, *, started: bool) -> bytes:
        try:
            with anyio.fail_after(max(0.0, self._deadline - anyio.current_time())):
                return await self.stream.receive(RECEIVE_BYTES)
        except TimeoutError:
            raise httpx.ReadTimeout("timed out waiting for the reply") from None
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            if not started:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.") from None
            return b""  # the end of a body sent until close
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from None

    def reusable(self) -> bool:
        """Whether the next request may use this connection: both sides done, and nothing sent past the
        reply (bytes a lying Content-Length left over would be read as the next request's reply)."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE and not self.h11.trailing_data[0]:
            self.h11.start_next_cycle()
            return True
        return False


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
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: list[_Connection] = []
        self._turns = anyio.Semaphore(max_connections)
        self._ssl: ssl.SSLContext | None = None

    async def request(
        self, method: str, target: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Reply:
        """`target`: the path and query below the base URL. Raises httpx's exception types."""
        fields = [("Host", self.authority), ("Accept", "application/json"), ("User-Agent", "tinyscheduler")]
        fields += list((headers or {}).items())
        if body is not None:
            fields += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        events: list[h11.Event] = [h11.Request(method=method, target=self.prefix + target, headers=fields)]
        if body is not None:
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        async with self._turns:
            connection = await self._connection()
            try:
                reply = await connection.exchange(events)
            except BaseException:
                await _close(connection)
                raise
            if connection.reusable():
                self._idle.append(connection)
            else:
                await _close(connection)
            return reply

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await _close(connection)

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed_by_server():
                return connection
            await _close(connection)
        try:
            with anyio.fail_after(self.connect_timeout):
                if self.tls:
                    stream: anyio.abc.ByteStream = await anyio.connect_tcp(
                        self.host, self.port, tls=True, ssl_context=self._context(), tls_hostname=self.host
                    )
                else:
                    stream = await anyio.connect_tcp(self.host, self.port)
        except TimeoutError:
            raise httpx.ConnectTimeout(f"no connection to {self.authority} within {self.connect_timeout:g}s") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from None
        return _Connection(stream, self.read_timeout)

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl


async def _close(connection: _Connection) -> None:
    with anyio.CancelScope(shield=True), contextlib.suppress(OSError, anyio.BrokenResourceError):
        await connection.stream.aclose()
