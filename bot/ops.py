"""The ops endpoint of a running bot: GET /healthz and GET /metrics (Prometheus); and how a
bot process stops (SIGTERM / SIGINT set a stop event, `until_stopped` waits for it).

/healthz answers 200 with what the bot serves (rows, dataset version, model) while the dataset
is open, the encoder worker runs and every front end is up, and 503 with the reason otherwise;
the Docker health check and load balancers poll it. "frontends" says, per front end, its state
("connected": the Discord gateway, Slack's Socket Mode; "listening": Slack's HTTP listener, the
web page), as its `Probe` reports it. /metrics renders the service's `core.metrics.Metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from core.errors import SearchAllError
from core.service import SearchService

log = logging.getLogger(__name__)

# A front end's health: (up, state), e.g. (True, "connected"), (False, "disconnected").
Probe = Callable[[], Awaitable[tuple[bool, str]]]

SERVICE_KEY = web.AppKey("service", SearchService)
FRONTENDS_KEY = web.AppKey("frontends", Mapping)  # name -> Probe; filled as the front ends start


async def frontend_states(probes: Mapping[str, Probe]) -> tuple[dict[str, str], list[str]]:
    """Each front end's state, and the names of those that are down."""
    states, down = {}, []
    for name, probe in list(probes.items()):
        up, states[name] = await probe()
        if not up:
            down.append(name)
    return states, down


async def healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    states, down = await frontend_states(request.app[FRONTENDS_KEY])
    if not service.worker.running:
        return web.json_response({"status": "down", "reason": "the encoder worker is not running",
                                  "frontends": states}, status=503)
    try:
        info = service.store.info
    except SearchAllError as exc:
        return web.json_response({"status": "down", "reason": str(exc), "frontends": states}, status=503)
    body = {"status": "ok", "rows": info.rows, "version": info.version, "model": info.model_name,
            "frontends": states}
    if down:
        reason = ", ".join(f"{name} is {states[name]}" for name in down)
        return web.json_response({**body, "status": "down", "reason": reason}, status=503)
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICE_KEY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def ops_app(service: SearchService, frontends: Mapping[str, Probe] | None = None) -> web.Application:
    app = web.Application()
    app[SERVICE_KEY] = service
    app[FRONTENDS_KEY] = {} if frontends is None else frontends
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


@asynccontextmanager
async def serve_ops(
    service: SearchService, host: str, port: int, frontends: Mapping[str, Probe] | None = None
) -> AsyncIterator[int | None]:
    """Serve /healthz and /metrics on host:port while the block runs; yields the bound port
    (None when `port` is 0: turned off). `frontends` is read at each request, so the caller may
    add a front end's probe once it has started."""
    if port == 0:
        yield None
        return
    runner = web.AppRunner(ops_app(service, frontends), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    log.info("health and metrics on http://%s:%d/healthz and /metrics", host, bound)
    try:
        yield bound
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------------- stopping


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` (a clean shutdown, exit 0) instead of killing the process."""
    loop = asyncio.get_running_loop()
    handled = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # Windows, threads
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
    try:
        yield
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


async def until_stopped(stop: asyncio.Event, *running: asyncio.Task) -> None:
    """Wait until `stop` is set or one of the `running` tasks (a bot's connection) ends; that
    task's error is raised (a wrong token, a refused intent)."""
    stopped = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({stopped, *running}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    for task in running:
        if task in done:
            task.result()
            log.warning("a front end stopped by itself: shutting down")
