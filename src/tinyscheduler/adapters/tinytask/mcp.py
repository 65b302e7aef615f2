"""The MCP transports: JSON-RPC `tools/call` to TinyTask's tools.

Two wire protocols, one tool mapping:
- `McpHttpClient`, streamable HTTP (TinyTask 2.x): each message is a `POST /mcp` whose reply is a
  JSON body or an SSE-framed stream.
- `McpSseClient`, the legacy SSE transport (the only one of tinytask-mcp 1.0): a long-lived
  `GET /mcp` event stream names a POST URL in its first `endpoint` event; POSTs answer 202 and the
  replies come back on the stream, matched to their call by JSON-RPC id.

The tool mapping follows the server's quirks: failures are `isError` results, not JSON-RPC
errors; `update_task` rejects `assigned_to: null` (`""` unassigns); tool text is JSON, or a
sentence, a blank line and JSON.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import json
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal
from urllib.parse import urljoin

import anyio
import httpx

from tinyscheduler import __version__
from tinyscheduler.adapters.tinytask._http11 import MAX_REPLY_BYTES, too_large
from tinyscheduler.adapters.tinytask._transport import (
    HttpClient,
    Transient,
    capped_lines,
    check_status,
    collect_pages,
    describe,
    expect_dict,
    expect_list,
    one_line,
    one_task,
    queue_names,
    read_capped,
    status_filter,
)
from tinyscheduler.adapters.tinytask.client import SCHEDULER_NAME
from tinyscheduler.adapters.tinytask.errors import (
    TaskNotFound,
    TinyTaskBadReply,
    TinyTaskRejected,
)
from tinyscheduler.adapters.tinytask.models import ServerFeatures, TaskBatch, parse_tasks
from tinyscheduler.core.tasks import Task

#: Keys every task of TinyTask 2.x has and tinytask-mcp 1.0 never sends.
NEW_SERVER_TASK_KEYS = frozenset({"queue_name", "is_currently_blocked"})
#: How long a streamable-HTTP reply stream may stay open after its reply before it is dropped.
STREAM_END_GRACE_SEC = 0.5


async def sse_events(lines: AsyncIterator[str]) -> AsyncGenerator[tuple[str, str], None]:
    """(event, data) pairs of a text/event-stream; multi-line data is joined with newlines.

    An event cut off by the end of the stream is still delivered: a server that closes right
    after its last `data:` line has said all it will say.
    """
    event, data, size = "", list[str](), 0
    async for line in lines:
        if not line:
            if data:
                yield event or "message", "\n".join(data)
            event, data, size = "", [], 0
            continue
        if line.startswith(":"):  # comment / keep-alive
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            size += len(value)
            if size > MAX_REPLY_BYTES:  # an event without end must not grow the daemon
                raise too_large(MAX_REPLY_BYTES, "event")
            data.append(value)
    if data:
        yield event or "message", "\n".join(data)


class _Channel:
    """One MCP session: `initialize` is sent once per channel, and a dead channel is replaced."""

    def __init__(self) -> None:
        self.initialized = False
        self.closed = False


class _McpClient(HttpClient):
    """The tool mapping and session handling both MCP transports share."""

    protocol_version: ClassVar[str]
    transport: ClassVar[Literal["mcp-http", "mcp-sse"]]

    def __init__(self, base_url: str, **options: Any) -> None:
        super().__init__(base_url, **options)
        self.mcp_url = self.base_url + "/mcp"
        self._ids = itertools.count(1)
        self._channel_lock = anyio.Lock()
        self._current: _Channel | None = None
        # Optimistic until `detect_features` has asked the server (`connect` always does).
        self.features = ServerFeatures(protocol=self.transport)
        self._single_status = False

    # --- transport hooks ---------------------------------------------------------------------

    @abc.abstractmethod
    async def _open(self) -> _Channel:
        """A new channel to the server (not yet initialized)."""

    @abc.abstractmethod
    async def _send(self, channel: _Channel, message: dict[str, Any]) -> dict[str, Any] | None:
        """One attempt at one message: the JSON-RPC reply to a request, None for a notification."""

    # --- JSON-RPC ------------------------------------------------------------------------------

    async def _channel(self) -> _Channel:
        async with self._channel_lock:
            if self._current is None or self._current.closed:
                self._current = await self._open()
            channel = self._current
            if not channel.initialized:
                reply = await self._send(
                    channel,
                    self._message(
                        "initialize",
                        {
                            "protocolVersion": self.protocol_version,
                            "capabilities": {},
                            "clientInfo": {"name": SCHEDULER_NAME, "version": __version__},
                        },
                    ),
                )
                _rpc_result(reply, "initialize")
                await self._send(channel, {"jsonrpc": "2.0", "method": "notifications/initialized"})
                channel.initialized = True
            return channel

    def _message(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}

    async def _request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        async def attempt() -> dict[str, Any] | None:
            # A fresh id per attempt: a late reply to a failed attempt must not answer the next.
            return await self._send(await self._channel(), self._message(method, params))

        return _rpc_result(await self._api.call(self.mcp_url, attempt), method)

    async def _tool(
        self, name: str, arguments: dict[str, Any], *, missing: type[TinyTaskRejected] = TinyTaskRejected
    ) -> Any:
        result = await self._request("tools/call", {"name": name, "arguments": arguments})
        text = _tool_text(result, name)
        if result.get("isError") is True:
            # The server reports every failure as text; "not found" is how it says the id is unknown.
            cls = missing if "not found" in text.lower() else TinyTaskRejected
            raise cls(f"{one_line(text)} (MCP tool {name})")
        return _tool_payload(text, name)

    # --- what the server can do ----------------------------------------------------------------

    async def detect_features(self) -> ServerFeatures:
        """Ask the server what it is: the old tinytask-mcp has no queues and no blocking."""
        tools: set[str] = set()
        params: dict[str, Any] = {}
        while True:
            listing = await self._request("tools/list", params)
            tools.update(
                t["name"]
                for t in expect_list(listing.get("tools"), "MCP tools/list")
                if isinstance(t, dict) and isinstance(t.get("name"), str)
            )
            cursor = listing.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                break
            params = {"cursor": cursor}
        old = "list_queues" not in tools
        if not old:
            sample = await self._task_page({}, 1, 0)
            old = bool(sample) and isinstance(sample[0], dict) and not sample[0].keys() >= NEW_SERVER_TASK_KEYS
        self.features = ServerFeatures(protocol=self.transport, queues=not old, blocking=not old)
        self._single_status = old
        return self.features

    def _require_queues(self) -> None:
        if not self.features.queues:
            raise TinyTaskRejected(
                f"the TinyTask server at {self.base_url} has no queues (old tinytask-mcp); "
                "upgrade it to TinyTask 2.x to schedule by queue"
            )

    # --- the interface -------------------------------------------------------------------------

    async def list_queues(self) -> list[str]:
        self._require_queues()
        reply = expect_dict(await self._tool("list_queues", {}), "MCP list_queues")
        return queue_names(reply.get("queues"), "MCP list_queues")

    async def list_tasks(
        self,
        *,
        status: Sequence[str] | None = None,
        assigned_to: str | None = None,
        queue_name: str | None = None,
    ) -> TaskBatch:
        filters: dict[str, Any] = {}
        if assigned_to is not None:
            filters["assigned_to"] = assigned_to
        if queue_name is not None:
            self._require_queues()
            filters["queue_name"] = queue_name
        statuses = status_filter(status)
        if statuses is None:
            return await self._all_tasks(filters)
        if not statuses:
            return TaskBatch(())
        if len(statuses) == 1 or not self._single_status:
            # A single value is what every server version takes; lists only the 2.x schema.
            return await self._all_tasks({**filters, "status": statuses[0] if len(statuses) == 1 else statuses})
        # tinytask-mcp 1.0 filters by one status at a time: ask per status, merge in server order.
        batches = [await self._all_tasks({**filters, "status": one}) for one in statuses]
        tasks = sorted((task for batch in batches for task in batch.tasks), key=_server_order)
        return TaskBatch(tuple(tasks), tuple(problem for batch in batches for problem in batch.problems))

    async def _all_tasks(self, filters: dict[str, Any]) -> TaskBatch:
        async def page(limit: int, offset: int) -> list[Any]:
            return await self._task_page(filters, limit, offset)

        return parse_tasks(await collect_pages(page, self.page_size), "MCP list_tasks", self.task_cache)

    async def _task_page(self, filters: dict[str, Any], limit: int, offset: int) -> list[Any]:
        # The tool's default limit is 100, so the limit is always sent.
        reply = expect_dict(
            await self._tool("list_tasks", {**filters, "limit": limit, "offset": offset}), "MCP list_tasks"
        )
        return expect_list(reply.get("tasks"), "MCP list_tasks")

    async def get_task(self, task_id: int) -> Task:
        return one_task(await self._tool("get_task", {"id": int(task_id)}, missing=TaskNotFound), "MCP get_task")

    async def update_task(self, task_id: int, **fields: Any) -> Task:
        if "assigned_to" in fields and fields["assigned_to"] is None:
            fields["assigned_to"] = ""  # the tool rejects null; an empty name unassigns
        reply = await self._tool("update_task", {"id": int(task_id), **fields}, missing=TaskNotFound)
        return one_task(reply, "MCP update_task")

    async def add_comment(self, task_id: int, content: str, created_by: str = SCHEDULER_NAME) -> None:
        reply = await self._tool(
            "add_comment",
            {"task_id": int(task_id), "content": content, "created_by": created_by},
            missing=TaskNotFound,
        )
        expect_dict(reply, "MCP add_comment")


class _HttpSession(_Channel):
    def __init__(self) -> None:
        super().__init__()
        self.session_id: str | None = None


class McpHttpClient(_McpClient):
    """MCP over streamable HTTP (`POST /mcp`), TinyTask 2.x's MCP transport."""

    protocol_version = "2025-03-26"
    transport = "mcp-http"
    #: Set once a server kept a reply stream open past `STREAM_END_GRACE_SEC`: stop waiting for ends.
    _streams_stay_open = False

    async def _finish_stream(self, events: AsyncIterator[tuple[str, str]]) -> None:
        """Read the reply stream to its end, so its connection goes back to the pool.

        A stream left unread is closed with its connection, and every call would pay for a new
        TCP connection (on the fake TinyTask a 2,000-task dry-run pass took 5x longer that way).
        The MCP spec says a server should close the stream once it has sent the reply, so this
        normally takes no time. A server that keeps it open costs one wait of
        `STREAM_END_GRACE_SEC`; after that this client stops waiting and drops such streams.
        """
        if self._streams_stay_open:
            return
        with anyio.move_on_after(STREAM_END_GRACE_SEC) as scope:
            try:
                async for _ in events:  # events after the reply are addressed to nobody here
                    pass
            except (httpx.HTTPError, Transient):
                pass  # the reply is in hand; the connection is dropped, as it would have been
        if scope.cancelled_caught:
            self._streams_stay_open = True

    async def _open(self) -> _Channel:
        return _HttpSession()

    async def _send(self, channel: _Channel, message: dict[str, Any]) -> dict[str, Any] | None:
        assert isinstance(channel, _HttpSession)
        headers = {"Accept": "application/json, text/event-stream"}
        if channel.session_id is not None:
            headers["Mcp-Session-Id"] = channel.session_id
        async with self._api.http.stream("POST", self.mcp_url, json=message, headers=headers) as response:
            if response.status_code == 404 and channel.session_id is not None:
                # The server forgot the session (it restarted): the next attempt starts a new one.
                channel.closed = True
                raise Transient("MCP session expired (HTTP 404)")
            await check_status(response, "POST /mcp")
            channel.session_id = response.headers.get("Mcp-Session-Id", channel.session_id)
            if "id" not in message:
                return None
            if response.headers.get("Content-Type", "").startswith("text/event-stream"):
                async with contextlib.aclosing(sse_events(capped_lines(response))) as events:
                    async for event, data in events:
                        reply = _json_or_none(data) if event == "message" else None
                        if isinstance(reply, dict) and reply.get("id") == message["id"]:
                            await self._finish_stream(events)
                            return reply
                raise Transient("MCP reply stream ended before the answer")
            body = await read_capped(response)
            return expect_dict(_json_or_bad(body.decode("utf-8", "replace"), "POST /mcp"), "POST /mcp")


class _EventStream(_Channel):
    """The legacy transport's `GET /mcp` stream, read by whichever call is waiting for a reply.

    No background reader: a call holds the stream's lock while it reads events, keeps the replies
    addressed to other waiting calls for them, and returns at its own. When the stream ends, every
    call fails as `Transient`, so the retry policy opens a new stream and sends the call again.
    """

    def __init__(self, http: httpx.AsyncClient, url: str, connect_timeout: float) -> None:
        super().__init__()
        self.endpoint = ""
        self._http = http
        self._url = url
        self._connect_timeout = connect_timeout
        self._response: httpx.Response | None = None
        self._events: AsyncIterator[tuple[str, str]] | None = None
        self._reading = anyio.Lock()
        self._waiting: set[int] = set()
        self._replies: dict[int, dict[str, Any]] = {}

    async def open(self, within: float) -> None:
        """Connect and read up to the `endpoint` event."""
        # The stream is idle between calls by design, so it has no read timeout; a dead peer shows
        # up as a call that gets no reply in time, and that call closes the stream.
        timeout = httpx.Timeout(self._connect_timeout, read=None)
        request = self._http.build_request("GET", self._url, headers={"Accept": "text/event-stream"}, timeout=timeout)
        with anyio.move_on_after(within) as scope:
            try:
                self._response = await self._http.send(request, stream=True)
                await check_status(self._response, f"GET {httpx.URL(self._url).path}")
                self._events = sse_events(capped_lines(self._response))
                while not self.endpoint:
                    event, data = await self._next()
                    if event == "endpoint":
                        self.endpoint = urljoin(self._url, data.strip())
            except httpx.HTTPError as exc:
                await self.close()
                raise Transient(f"MCP event stream ended before its endpoint event: {describe(exc)}") from None
            except BaseException:
                await self.close()
                raise
        if scope.cancelled_caught:
            await self.close()
            raise Transient(f"no endpoint event on the MCP event stream within {within:g} s")

    def expect(self, ident: int) -> None:
        """Keep the reply to `ident` when it comes (register before posting: it may come first)."""
        if self.closed:
            raise Transient("MCP event stream closed")
        self._waiting.add(ident)

    def forget(self, ident: int) -> None:
        self._waiting.discard(ident)
        self._replies.pop(ident, None)

    async def reply(self, ident: int, within: float) -> dict[str, Any]:
        with anyio.move_on_after(within):
            async with self._reading:
                while ident not in self._replies:
                    event, data = await self._next()
                    if event == "message":
                        self._deliver(data)
            return self._replies.pop(ident)
        await self.close()
        raise Transient(f"no reply on the MCP event stream within {within:g} s")

    async def _next(self) -> tuple[str, str]:
        if self._events is None or self.closed:
            raise Transient("MCP event stream closed")
        try:
            return await self._events.__anext__()
        except StopAsyncIteration:
            cause = "the server closed it"
        except httpx.HTTPError as exc:
            cause = describe(exc)
        await self.close()
        raise Transient(f"MCP event stream lost: {cause}")

    async def close(self) -> None:
        self.closed = True
        if self._response is not None:
            response, self._response = self._response, None
            with anyio.CancelScope(shield=True):
                await response.aclose()

    def _deliver(self, data: str) -> None:
        # Anything that is not a reply to a waiting call (a server ping, a late reply to an attempt
        # that already gave up) has nobody to go to and is dropped.
        reply = _json_or_none(data)
        if not isinstance(reply, dict):
            return
        ident = reply.get("id")
        if isinstance(ident, int) and ident in self._waiting:
            self._replies[ident] = reply


class McpSseClient(_McpClient):
    """MCP over the legacy SSE transport (`GET /mcp` stream + POSTs to the URL it names)."""

    protocol_version = "2024-11-05"
    transport = "mcp-sse"

    async def aclose(self) -> None:
        if isinstance(self._current, _EventStream):
            await self._current.close()
        await super().aclose()

    async def _open(self) -> _Channel:
        stream = _EventStream(self._api.http, self.mcp_url, self._api.connect_timeout)
        await stream.open(within=self._api.connect_timeout + self._api.read_timeout)
        return stream

    async def _send(self, channel: _Channel, message: dict[str, Any]) -> dict[str, Any] | None:
        assert isinstance(channel, _EventStream)
        ident = message.get("id")
        # Register for the reply before posting: it can arrive on the stream before the POST returns.
        if isinstance(ident, int):
            channel.expect(ident)
        try:
            response = await self._api.http.post(channel.endpoint, json=message)
            if response.status_code == 404:
                # The server no longer knows the session (it restarted): start a new stream.
                await channel.close()
                raise Transient("MCP SSE session lost (HTTP 404)")
            await check_status(response, "POST /mcp")
            if not isinstance(ident, int):
                return None
            return await channel.reply(ident, self._api.read_timeout)
        finally:
            if isinstance(ident, int):
                channel.forget(ident)


def _server_order(task: Task) -> tuple[int, datetime, int]:
    """TinyTask's list order: priority desc, then creation (ids break ties the same way)."""
    return (-task.priority, task.created_at, task.id)


def _rpc_result(reply: Any, method: str) -> dict[str, Any]:
    reply = expect_dict(reply, f"MCP {method}")
    error = reply.get("error")
    if error is not None:
        detail = error.get("message") if isinstance(error, dict) else error
        raise TinyTaskRejected(f"MCP {method}: JSON-RPC error: {one_line(str(detail))}")
    return expect_dict(reply.get("result"), f"MCP {method}")


def _tool_text(result: dict[str, Any], tool: str) -> str:
    content = result.get("content")
    first = content[0] if isinstance(content, list) and content else None
    text = first.get("text") if isinstance(first, dict) else None
    if isinstance(text, str):
        return text
    raise TinyTaskBadReply(f"MCP {tool}: expected text content, got {one_line(json.dumps(result), 80)}")


def _tool_payload(text: str, tool: str) -> Any:
    """Tool text is JSON, or a sentence, a blank line, then JSON."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    _, blank_line, rest = text.partition("\n\n")
    return _json_or_bad(rest if blank_line else text, f"MCP {tool}")


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _json_or_bad(text: str, endpoint: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise TinyTaskBadReply(f"{endpoint}: reply is not JSON: {one_line(text, 80)!r}") from None
