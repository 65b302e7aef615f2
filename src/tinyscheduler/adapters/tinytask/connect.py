"""Open a TinyTask client: pick the transport the server speaks and learn what it can do."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import httpx

from tinyscheduler.adapters.tinytask._transport import HttpClient
from tinyscheduler.adapters.tinytask.client import TinyTaskClient
from tinyscheduler.adapters.tinytask.errors import TinyTaskBadReply, TinyTaskRejected
from tinyscheduler.adapters.tinytask.mcp import McpHttpClient, McpSseClient
from tinyscheduler.adapters.tinytask.rest import RestClient

Protocol = Literal["rest", "mcp", "auto"]


def base_url(endpoint: str) -> str:
    """The server's base URL; `http://host:port/mcp` (how MCP users write it) works too."""
    url = endpoint.strip().rstrip("/")
    if url.endswith("/mcp"):
        url = url[: -len("/mcp")]
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"TinyTask endpoint must be an http(s) URL, got {endpoint!r}")
    return url


async def connect(endpoint: str, protocol: Protocol = "auto", **opts: Any) -> TinyTaskClient:
    """A ready client; `client.features` tells the transport chosen and what the server lacks.

    auto: REST when `GET /api/v1/queues` answers a JSON list, else MCP over streamable HTTP, else
    MCP over the legacy SSE transport. `opts` go to the client constructor (timeouts, retries,
    backoff_base, sleep, page_size). An unreachable server raises TinyTaskUnavailable after the
    retry policy gave up; a server that speaks none of the protocols raises TinyTaskBadReply.
    """
    if protocol not in ("rest", "mcp", "auto"):
        raise ValueError(f"protocol must be 'rest', 'mcp' or 'auto', got {protocol!r}")
    base = base_url(endpoint)
    refusals: list[str] = []

    # Each candidate with the call that proves the server speaks it, in the order auto tries them.
    candidates: list[tuple[str, type[HttpClient], Callable[[Any], Awaitable[object]]]] = []
    if protocol in ("rest", "auto"):
        candidates.append(("REST", RestClient, lambda client: client.list_queues()))
    if protocol in ("mcp", "auto"):
        candidates += [
            (transport.transport, transport, lambda client: client.detect_features())
            for transport in (McpHttpClient, McpSseClient)
        ]
    for label, transport_class, probe in candidates:
        client = transport_class(base, **opts)
        try:
            await probe(client)
            return client
        except (TinyTaskRejected, TinyTaskBadReply) as exc:
            await client.aclose()
            refusals.append(f"{label}: {exc}")
        except BaseException:
            await client.aclose()
            raise

    raise TinyTaskBadReply(f"no TinyTask {_wanted(protocol)} at {base}: " + "; ".join(refusals))


def _wanted(protocol: Protocol) -> str:
    return {"rest": "REST API", "mcp": "MCP endpoint", "auto": "REST API or MCP endpoint"}[protocol]
