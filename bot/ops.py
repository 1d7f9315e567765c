"""The ops endpoint of a running bot: GET /healthz and GET /metrics (Prometheus).

/healthz answers 200 with what the bot serves (rows, dataset version, model) while the dataset
is open and the encoder worker runs, and 503 with the reason otherwise; the Docker health check
and load balancers poll it. /metrics renders the service's `core.metrics.Metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from core.errors import SearchAllError
from core.service import SearchService

log = logging.getLogger(__name__)

SERVICE_KEY = web.AppKey("service", SearchService)


async def healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    if not service.worker.running:
        return web.json_response({"status": "down", "reason": "the encoder worker is not running"}, status=503)
    try:
        info = service.store.info
    except SearchAllError as exc:
        return web.json_response({"status": "down", "reason": str(exc)}, status=503)
    return web.json_response(
        {"status": "ok", "rows": info.rows, "version": info.version, "model": info.model_name}
    )


async def metrics(request: web.Request) -> web.Response:
    body = request.app[SERVICE_KEY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def ops_app(service: SearchService) -> web.Application:
    app = web.Application()
    app[SERVICE_KEY] = service
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


@asynccontextmanager
async def serve_ops(service: SearchService, host: str, port: int) -> AsyncIterator[int | None]:
    """Serve /healthz and /metrics on host:port while the block runs; yields the bound port
    (None when `port` is 0: turned off)."""
    if port == 0:
        yield None
        return
    runner = web.AppRunner(ops_app(service), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    log.info("health and metrics on http://%s:%d/healthz and /metrics", host, bound)
    try:
        yield bound
    finally:
        await runner.cleanup()
