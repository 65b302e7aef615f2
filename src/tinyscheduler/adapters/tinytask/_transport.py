"""Machinery shared by the transports: one pooled HTTP client, the retry policy, paging.

Kept private so the public surface stays the `TinyTaskClient` interface plus the constructors.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import anyio
import httpx

from tinyscheduler.adapters.tinytask._http11 import MAX_REPLY_BYTES, Http11, too_large
from tinyscheduler.adapters.tinytask.client import PAGE_SIZE, TinyTaskClient
from tinyscheduler.adapters.tinytask.errors import TinyTaskBadReply, TinyTaskRejected, TinyTaskUnavailable
from tinyscheduler.adapters.tinytask.models import TaskCache, parse_task
from tinyscheduler.core.tasks import Task

# httpcore runs `import sniffio` for each lock, event and semaphore it sets up (about 9 per
# request) and falls back to asyncio when that fails. Without sniffio installed (anyio 4 no longer
# needs it) every one of those imports searches sys.path again with stat() calls: ~28 us each, some
# 15 ms of a 60-request pass (tests/bench/bench_dryrun.py). Recording the absence once makes them
# ~1 us; nothing else changes, as the module cannot appear in a running process.
if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

#: Ceiling of one backoff delay, so a long outage never makes a single wait longer than a tick.
BACKOFF_CAP = 10.0

#: Connections kept to the server, and requests in flight at once. httpcore walks its whole pool
#: and its whole queue of waiting requests for every request (a poll() and a getpeername() per idle
#: connection), so a burst of a hundred claims made each request cost milliseconds of CPU
#: (tests/bench/bench_runs.py, "slots"). Requests beyond REQUESTS_AT_ONCE wait on a semaphore here
#: instead, at no cost; the two spare connections are for MCP's long-lived event stream.
MAX_CONNECTIONS = 8
REQUESTS_AT_ONCE = MAX_CONNECTIONS - 2

#: Failures of the connection rather than of the request: another attempt may well succeed.
RETRYABLE = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError)


class Transient(Exception):
    """One attempt failed in a way another attempt may not (5xx, lost stream); never escapes."""


def one_line(text: str, limit: int = 200) -> str:
    """Server text squeezed into one log line."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def describe(exc: BaseException) -> str:
    """A short cause for a network failure; httpx timeouts often have an empty message."""
    text = one_line(str(exc))
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


@dataclass(frozen=True)
class RetryPolicy:
    """Retries connection errors, timeouts and `Transient` failures with full-jitter backoff.

    Full jitter (a uniform delay in [0, base * 2**attempt]) keeps many schedulers that lost the
    same server from hammering it in lockstep when it comes back.
    """

    retries: int = 3
    backoff_base: float = 0.2
    sleep: Sleep = field(default=anyio.sleep)

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_base < 0:
            raise ValueError(f"retries and backoff_base must not be negative, got {self.retries}, {self.backoff_base}")

    def delay(self, attempt: int) -> float:
        return random.uniform(0.0, min(BACKOFF_CAP, self.backoff_base * 2**attempt))

    async def run(self, target: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()` until it succeeds or the retries are spent; `target` names it in errors."""
        tries = self.retries + 1
        for number in range(tries):
            try:
                return await attempt()
            except RETRYABLE as exc:
                cause = describe(exc)
            except Transient as exc:
                cause = str(exc)
            except httpx.HTTPError as exc:
                # Not worth another try (a body that cannot be decoded, a URL httpx cannot use),
                # but still only the client's own error types leave it.
                raise TinyTaskBadReply(f"{target}: {describe(exc)}") from exc
            if number + 1 < tries:
                await self.sleep(self.delay(number))
        raise TinyTaskUnavailable(f"TinyTask unavailable at {target}: {cause} (gave up after {tries} attempts)")


def server_message(body: bytes, reason: str, status: int) -> str:
    """The server's `{"error": ...}` text, or the start of whatever else it sent."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):  # a JSON-RPC error object, as MCP endpoints send
        error = error.get("message")
    if isinstance(error, str):
        return one_line(error)
    return one_line(body.decode("utf-8", "replace")) or reason or f"HTTP {status}"


def decode_json(body: bytes, endpoint: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        shown = one_line(body.decode("utf-8", "replace"), 80)
        raise TinyTaskBadReply(f"{endpoint}: reply is not JSON: {shown!r}") from None


def status_error(
    status: int, body: bytes, reason: str, endpoint: str, missing: type[TinyTaskRejected] = TinyTaskRejected
) -> Exception | None:
    """None for a 2xx; a 5xx is `Transient` (retried), a 4xx is final: `missing` for 404."""
    if 200 <= status < 300:
        return None
    if status >= 500:
        return Transient(f"HTTP {status}: {server_message(body, reason, status)}")
    if status >= 400:
        cls = missing if status == 404 else TinyTaskRejected
        return cls(f"{server_message(body, reason, status)} ({endpoint}: HTTP {status})", status)
    return TinyTaskBadReply(f"{endpoint}: unexpected HTTP {status}")


class JsonHttp:
    """The connections of one client to its server, with the REST error mapping.

    JSON requests go over `Http11` (a few kept-alive connections, tinytask._http11); MCP's event
    streams over httpx (`http`, opened on first use). Timeouts are explicit: `connect_timeout` to
    open a connection, `read_timeout` for a whole JSON request (its reply to the last byte) and for
    each read, write and wait for a connection of MCP's.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        retries: int,
        backoff_base: float,
        sleep: Sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retry = RetryPolicy(retries, backoff_base, sleep)
        self._at_once = anyio.Semaphore(REQUESTS_AT_ONCE)
        self._json = Http11(
            self.base_url, connect_timeout=connect_timeout, read_timeout=read_timeout, max_connections=REQUESTS_AT_ONCE
        )
        self._http: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        """httpx, for MCP (streamed replies, the legacy event stream)."""
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self.read_timeout, connect=self.connect_timeout),
                limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS),
            )
        return self._http

    async def aclose(self) -> None:
        await self._json.aclose()
        if self._http is not None:
            await self._http.aclose()

    async def call(self, target: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """`attempt()` under the retry policy, each try holding one of the REQUESTS_AT_ONCE turns."""

        async def one_turn() -> T:
            async with self._at_once:
                return await attempt()

        return await self.retry.run(target, one_turn)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str | int] | None = None,
        body: dict[str, Any] | None = None,
        missing: type[TinyTaskRejected] = TinyTaskRejected,
    ) -> Any:
        """The decoded JSON reply; a 404 raises `missing` (TaskNotFound for task endpoints)."""
        endpoint = f"{method} {path}"
        target = f"{path}?{urlencode(params, quote_via=quote)}" if params else path
        payload = json.dumps(body).encode() if body is not None else None

        async def attempt() -> bytes:
            reply = await self._json.request(method, target, body=payload)
            failed = status_error(reply.status, reply.body, reply.reason, endpoint, missing)
            if failed is not None:
                raise failed
            return reply.body

        return decode_json(await self.retry.run(self.base_url + path, attempt), endpoint)


async def check_status(
    response: httpx.Response, endpoint: str, missing: type[TinyTaskRejected] = TinyTaskRejected
) -> None:
    """Pass a 2xx; raise what `status_error` says of anything else (httpx's streamed replies)."""
    if 200 <= response.status_code < 300:
        return
    body = await read_capped(response)  # a streamed response has not read its error body yet
    failed = status_error(response.status_code, body, response.reason_phrase, endpoint, missing)
    assert failed is not None
    raise failed


async def read_capped(response: httpx.Response) -> bytes:
    """The body of a streamed reply, up to MAX_REPLY_BYTES: a server sending without end cannot grow
    the daemon (httpx's own `aread` keeps all it gets)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_REPLY_BYTES:
            raise too_large(MAX_REPLY_BYTES)
        chunks.append(chunk)
    return b"".join(chunks)


async def capped_lines(response: httpx.Response) -> AsyncIterator[str]:
    """The lines of a streamed reply (an event stream, which may stay open for hours), none longer
    than MAX_REPLY_BYTES: httpx's `aiter_lines` keeps a line without end in memory whole."""
    parts: list[bytes] = []  # the line begun so far, in pieces: no copy per piece
    size = 0
    async for chunk in response.aiter_bytes():
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            parts.append(chunk[start:end])
            yield b"".join(parts).removesuffix(b"\r").decode("utf-8", "replace")
            parts, size, start = [], 0, end + 1
        if start < len(chunk):
            parts.append(chunk[start:])
            size += len(chunk) - start
            if size > MAX_REPLY_BYTES:
                raise too_large(MAX_REPLY_BYTES)
    if parts:
        yield b"".join(parts).removesuffix(b"\r").decode("utf-8", "replace")


async def collect_pages(fetch: Callable[[int, int], Awaitable[list[Any]]], page_size: int) -> list[Any]:
    """Every row of a limit/offset listing, in server order, each task once.

    Tasks that change between two page reads can shift the offsets: a duplicate is dropped here;
    one that slips past is seen on the next pass. A page that brings nothing new ends the walk, so
    a server that ignores `offset` cannot make this loop forever.
    """
    rows: list[Any] = []
    seen: set[Any] = set()
    offset = 0
    while True:
        page = await fetch(page_size, offset)
        fresh = 0
        for raw in page:
            ident = raw.get("id") if isinstance(raw, dict) else None
            if ident is not None and ident in seen:
                continue
            if ident is not None:
                seen.add(ident)
            rows.append(raw)
            fresh += 1
        if len(page) < page_size or fresh == 0:
            return rows
        offset += len(page)


def expect_list(value: Any, endpoint: str, what: str = "JSON array") -> list[Any]:
    if not isinstance(value, list):
        raise TinyTaskBadReply(f"{endpoint}: expected a {what}, got {type(value).__name__}")
    return value


def expect_dict(value: Any, endpoint: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TinyTaskBadReply(f"{endpoint}: expected a JSON object, got {type(value).__name__}")
    return value


def status_filter(status: Any) -> list[str] | None:
    """The interface takes a sequence; a bare string is one status, not a list of letters."""
    if status is None:
        return None
    return [status] if isinstance(status, str) else list(status)


def one_task(raw: Any, endpoint: str) -> Task:
    """A single task the caller asked for by id: unusable content is a bad reply, not a skip."""
    parsed = parse_task(raw, endpoint)
    if isinstance(parsed, Task):
        return parsed
    raise TinyTaskBadReply(str(parsed))


class HttpClient(TinyTaskClient):
    """What every HTTP transport shares: the pooled connection, the retry policy, the page size."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        retries: int = 3,
        backoff_base: float = 0.2,
        sleep: Sleep = anyio.sleep,
        page_size: int = PAGE_SIZE,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self._api = JsonHttp(
            base_url,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries=retries,
            backoff_base=backoff_base,
            sleep=sleep,
        )
        self.page_size = page_size
        self.base_url = self._api.base_url
        #: Rows of earlier lists, validated once (models.TaskCache).
        self.task_cache = TaskCache()

    async def aclose(self) -> None:
        await self._api.aclose()

    async def health(self) -> dict[str, Any]:
        # Both servers serve /health over plain HTTP, whichever protocol carries the tasks.
        return expect_dict(await self._api.request("GET", "/health"), "GET /health")


def queue_names(reply: Any, endpoint: str) -> list[str]:
    queues = expect_list(reply, endpoint)
    if not all(isinstance(name, str) for name in queues):
        raise TinyTaskBadReply(f"{endpoint}: expected a list of queue names, got {queues!r:.80}")
    return queues
