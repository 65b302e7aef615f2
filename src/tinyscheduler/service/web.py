"""The optional HTTP listener (TINYSCHEDULER_HTTP_ADDR): `/metrics` for Prometheus and `/`, the status page.

It is served by aiohttp inside the daemon's own event loop (docs/architecture.md says why), owned
by the daemon's task group like every other task: bound before READY=1, closed at exit. It only
reads: no request changes anything, and a handler never waits on the disk in the loop (service.page).
Only GET and HEAD are answered. Bound to a loopback address, it answers only requests naming the
host as an address or `localhost`, so a web page in a browser on this host cannot read it through a
DNS name of its own (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable

import anyio
import structlog
from aiohttp import web

from tinyscheduler.service.page import gather_page, render_page
from tinyscheduler.service.runtime import Runtime

log = structlog.get_logger("tinyscheduler.http")

#: Page renders at once: each reads a few log tails in worker threads; more requests wait their turn.
PAGE_CONCURRENCY = 4
#: The text format every Prometheus reads (our names need nothing newer); the client's own latest
#: format changes with its version.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: How long the listener's connections get to finish when the daemon stops.
CLOSE_SEC = 2.0

_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def host_allowed(header: str | None) -> bool:
    """Whether a request's Host header names this host as an address or `localhost` (not a DNS name)."""
    if not header:
        return False
    name = header.rsplit(":", 1)[0] if not header.endswith("]") else header
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def build_app(runtime: Runtime, *, loopback: bool) -> web.Application:
    limiter = anyio.CapacityLimiter(PAGE_CONCURRENCY)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        if loopback and not host_allowed(request.headers.get("Host")):
            raise web.HTTPMisdirectedRequest(text="this listener answers requests to its address only\n")
        response = await handler(request)
        response.headers.update(_HEADERS)
        return response

    async def metrics(_: web.Request) -> web.Response:
        body = runtime.observer.metrics.text()
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def page(_: web.Request) -> web.Response:
        async with limiter:
            try:
                text = render_page(await gather_page(runtime))
            except Exception:  # a bug in the page must not reach the daemon; said in the log
                log.exception("status_page_failed")
                raise web.HTTPInternalServerError(text="the status page failed; see the daemon's log\n") from None
        return web.Response(text=text, content_type="text/html", charset="utf-8")

    app = web.Application(middlewares=[guard])
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", page)
    return app


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); OSError (address in use, no such address) as it comes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=64)


async def serve_http(
    runtime: Runtime, address: tuple[str, int], *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled. A listener that cannot bind is one error line: the daemon goes on."""
    host, port = address
    app = build_app(runtime, loopback=is_loopback(host))
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=CLOSE_SEC)
    await runner.setup()
    try:
        sock = bind(host, port)
        await web.SockSite(runner, sock).start()
    except OSError as exc:
        log.error("http_failed", addr=f"{host}:{port}", reason=exc.strerror or str(exc), detail="no metrics or page")
        await runner.cleanup()
        task_status.started()
        return
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
    runtime.observer.http_address = shown
    log.info("http_listening", addr=shown, metrics=f"http://{shown}/metrics", page=f"http://{shown}/")
    task_status.started()
    try:
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_SEC + 1):
            await runner.cleanup()
        runtime.observer.http_address = None
