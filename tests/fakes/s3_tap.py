"""A recording reverse proxy in front of the S3 server of tests (tests/fakes/s3_server.py).

A process pointed at a tap (`endpoint_url`) reaches moto through it, and the tap keeps the
method and path of every request it forwards, so a test can tell what that process did to the
bucket (reads only: GET and HEAD). `down()` plays an S3 outage for that process alone: until
`up()`, every request is answered 503 ServiceUnavailable without reaching moto. `stall(part)`
plays a slow S3: requests whose path contains `part` wait until `release()`.

Bodies are forwarded untouched (SigV4 signs the path and the payload hash, which moto does not
check anyway); the tap listens on 127.0.0.1, on a free port, while inside `async with`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp import web

# Hop-by-hop headers, and those aiohttp sets itself from the body it sends.
_NOT_FORWARDED = frozenset(
    {"host", "connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade"}
)
_OUTAGE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>the test's S3 outage</Message></Error>"
)


@dataclass(frozen=True)
class Tapped:
    method: str
    path: str  # with its query string
    answered: int  # the status the process got


@dataclass
class S3Tap:
    upstream: str  # the S3 server's endpoint URL
    requests: list[Tapped] = field(default_factory=list)
    is_down: bool = False
    stalled: int = 0  # requests waiting in a stall now
    _stall_part: str | None = None
    _released: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _port: int = 0

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def methods(self) -> set[str]:
        return {r.method for r in self.requests}

    def down(self) -> None:
        self.is_down = True

    def up(self) -> None:
        self.is_down = False

    def stall(self, part: str) -> None:
        self._stall_part = part
        self._released.clear()

    def release(self) -> None:
        self._stall_part = None
        self._released.set()

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=60)
        )
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if self.is_down:
            self.requests.append(Tapped(request.method, request.path_qs, 503))
            await request.read()
            return web.Response(status=503, body=_OUTAGE, content_type="application/xml")
        assert self._session is not None
        body = await request.read()
        if self._stall_part is not None and self._stall_part in request.path:
            self.stalled += 1
            try:
                await self._released.wait()
            finally:
                self.stalled -= 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body,
            allow_redirects=False,
        ) as answer:
            data = await answer.read()
            back = {k: v for k, v in answer.headers.items() if k.lower() not in _NOT_FORWARDED}
            self.requests.append(Tapped(request.method, request.path_qs, answer.status))
            if request.method == "HEAD":  # no body, but the object's size (boto3's downloads read it)
                response = web.StreamResponse(status=answer.status, headers=back)
                response.content_length = int(answer.headers.get("Content-Length", 0))
                await response.prepare(request)
                return response
            return web.Response(status=answer.status, body=data, headers=back)
