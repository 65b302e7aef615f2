"""Machinery shared by the transports: one pooled HTTP client, the retry policy, paging.

Kept private so the public surface stays the `TinyTaskClient` interface plus the constructors.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import httpx

from tinyscheduler.adapters.tinytask.client import PAGE_SIZE, TinyTaskClient
from tinyscheduler.adapters.tinytask.errors import TinyTaskBadReply, TinyTaskRejected, TinyTaskUnavailable
from tinyscheduler.adapters.tinytask.models import parse_task
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


def server_message(response: httpx.Response) -> str:
    """The server's `{"error": ...}` text, or the start of whatever else it sent."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # a JSON-RPC error object, as MCP endpoints send
        error = error.get("message")
    if isinstance(error, str):
        return one_line(error)
    return one_line(response.text) or response.reason_phrase or f"HTTP {response.status_code}"


def decode_json(response: httpx.Response, endpoint: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise TinyTaskBadReply(f"{endpoint}: reply is not JSON: {one_line(response.text, 80)!r}") from None


class JsonHttp:
    """The pooled connection set of one client, with the REST error mapping.

    Timeouts are explicit: `connect_timeout` to open a connection, `read_timeout` for each read,
    write and wait for a pooled connection.
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
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(read_timeout, connect=connect_timeout))

    async def aclose(self) -> None:
        await self.http.aclose()

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
        url = self.base_url + path
        endpoint = f"{method} {path}"

        async def attempt() -> httpx.Response:
            response = await self.http.request(method, url, params=params, json=body)
            await check_status(response, endpoint, missing)
            return response

        return decode_json(await self.retry.run(url, attempt), endpoint)


async def check_status(
    response: httpx.Response, endpoint: str, missing: type[TinyTaskRejected] = TinyTaskRejected
) -> None:
    """Pass a 2xx; a 5xx is `Transient` (retried), a 4xx is final: `missing` for 404."""
    status = response.status_code
    if 200 <= status < 300:
        return
    await response.aread()  # a streamed response has not read its error body yet
    if status >= 500:
        raise Transient(f"HTTP {status}: {server_message(response)}")
    if status >= 400:
        cls = missing if status == 404 else TinyTaskRejected
        raise cls(f"{server_message(response)} ({endpoint}: HTTP {status})", status)
    raise TinyTaskBadReply(f"{endpoint}: unexpected HTTP {status}")


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
