"""`search-all web`: a local web page to search the collection from a browser.

One static page (plain HTML, CSS and JavaScript in `bot/web/static/`, served from here: no build
step, no CDN) talks to a small JSON API on the same aiohttp server:

    GET  /                 the page
    GET  /api/config       limits the page shows and checks (results per page, file size)
    POST /api/search       multipart: text, limit, audio_as, image / audio files -> a reply
    POST /api/action       JSON {"id": "sa:more:<row>:<rank>" | "sa:page:<key>:<offset>", "limit"} -> a reply
    GET  /image/<row>      a result's JPEG kept in the dataset (when it has no http(s) URL)

A reply is `bot.common.reply.build_reply` as JSON, the same words the chat bots show; an error is
`{"error": message}` from `bot.common.handle.user_message` with a 4xx/5xx status (413 for uploads
over the limits). The search itself is the shared `SearchService` (the same encoder worker,
store and page memory as the bots). There is no login: it binds 127.0.0.1 unless told
otherwise, and says so loudly when it is not.

Requests from other web sites are refused (403, "requests from other web sites are refused"):
every route answers only a `Host` naming this server (127.0.0.1, localhost, [::1], `[web] host`
or the address bound; on a wildcard bind, also IP addresses and this machine's name), so a
DNS-rebinding page cannot read it; POSTs with `Origin: null`, another origin, or a
`Sec-Fetch-Site` other than same-origin / none are refused; images carry
`Cross-Origin-Resource-Policy: same-origin`. The JSON body of `/api/action` is read at most
`ACTION_BODY_BYTES` whatever its declared length (chunked bodies included).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from bot.common.handle import user_message
from bot.common.reply import (
    MoreLikeThis,
    Reply,
    build_reply,
    decode_action,
    is_web_url,
    item_fields,
    result_fields,
    run_action,
)
from bot.ops import stop_on_signals
from bot.web.form import limit_page_size, max_body_bytes, parse_limit, read_search_form
from core.config import Settings
from core.errors import BadInputError, MediaTooLargeError, SearchAllError
from core.service import SearchResult, SearchService

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
SERVICE = web.AppKey("service", SearchService)
SETTINGS = web.AppKey("settings", Settings)
HOSTS = web.AppKey("hosts", frozenset)  # the host names a request's `Host` may give
ANY_IP = web.AppKey("any_ip", bool)  # bound to every interface: any IP address in `Host` too
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
FETCH_SITES = ("same-origin", "none")  # Sec-Fetch-Site of the page's own posts, or a typed address
ACTION_BODY_BYTES = 4096
# Rows are stable (the collection is only appended to) and the ETag is the bytes' hash.
IMAGE_CACHE_CONTROL = "public, max-age=86400"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    # Images (and everything else) are for this page only: no other site may embed them.
    "Cross-Origin-Resource-Policy": "same-origin",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' http: https: data: blob:; media-src 'self' blob:; "
        "script-src 'self'; style-src 'self'; connect-src 'self' blob:; frame-ancestors 'none'"
    ),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ForbiddenOriginError(SearchAllError):
    """A request from another web site (a page cannot make the browser search here)."""


def reply_json(result: SearchResult, settings: Settings) -> dict[str, Any]:
    """The page's view of a result: the machine-readable fields of `search --json` (numbers),
    and `build_reply`'s words beside them, with image URLs the browser can load."""
    reply: Reply = build_reply(result, caption_chars=settings.bot.caption_chars)
    return {
        **result_fields(result),
        "header": reply.header,
        "heard_text": reply.heard,
        "notes": list(reply.notes),
        "notice": reply.notice,
        "images": [
            {
                **item_fields(image.item),
                "rank": image.rank,
                "score_text": image.score,
                "similar_text": image.similar,
                "caption": image.caption,
                "image_url": image_url(image.item.url, image.item.row),
                "more": image.more.encode(),
            }
            for image in reply.images
        ],
        "next_page": reply.next_page.encode() if reply.next_page else None,
        "timings_ms": {k: round(v, 1) for k, v in result.timings_ms.items()},
    }


def image_url(url: str | None, row: int) -> str:
    """A public or presigned http(s) URL as it is; anything else (file://, none) from /image/<row>."""
    if is_web_url(url):
        return url
    return f"/image/{row}"


def error_status(exc: BaseException) -> int:
    if isinstance(exc, MediaTooLargeError):
        return 413
    if isinstance(exc, ForbiddenOriginError):
        return 403
    if isinstance(exc, BadInputError):
        return 400
    if isinstance(exc, SearchAllError):  # the store, the model, the configuration
        return 503
    return 500


@web.middleware
async def errors_and_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """API errors as `{"error": message}`; security headers on every response."""
    try:
        check_host(request)
        response = await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/api/"):
            raise
        response = web.json_response({"error": exc.reason}, status=exc.status)
    except Exception as exc:  # noqa: BLE001 - user_message logs the unexpected ones
        response = web.json_response({"error": user_message(exc)}, status=error_status(exc))
    response.headers.update(SECURITY_HEADERS)
    return response


def host_name(host: str) -> str:
    """The name of a `Host` header without its port, lower case: "[::1]:7860" -> "::1"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def allowed_hosts(settings: Settings, bound_host: str) -> frozenset[str]:
    """The names a `Host` header may give: loopback's, the configured and the bound host;
    on a wildcard bind, this machine's names too."""
    names = {*LOOPBACK_NAMES, host_name(settings.web.host), host_name(bound_host)}
    if bound_host in WILDCARD_HOSTS:
        with suppress(OSError):
            names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    return frozenset(names - {""})


def is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_host(request: web.Request) -> None:
    """Refuse a `Host` that is not this server's (a DNS-rebinding page reaching 127.0.0.1)."""
    name = host_name(request.headers.get("Host", ""))
    if name in request.app[HOSTS] or (request.app[ANY_IP] and is_ip_address(name)):
        return
    log.info("refused a request for host %r", name[:100])
    raise ForbiddenOriginError("requests from other web sites are refused")


def check_origin(request: web.Request) -> None:
    """Refuse API posts that another site's page makes the browser send (no login here):
    another origin, the opaque `null` of sandboxed frames and file pages, and a
    `Sec-Fetch-Site` saying another site sent it."""
    origin = request.headers.get("Origin")
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if (
        (origin is not None and (origin == "null" or urlsplit(origin).netloc != request.host))
        or (fetch_site is not None and fetch_site.strip().lower() not in FETCH_SITES)
    ):
        raise ForbiddenOriginError("requests from other web sites are refused")


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def config(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    return web.json_response(
        {
            "default_limit": settings.search.default_limit,
            "max_limit": settings.search.max_limit,
            "max_file_bytes": settings.limits.max_file_bytes,
            "max_query_chars": settings.limits.max_query_chars,
        }
    )


async def search(request: web.Request) -> web.Response:
    check_origin(request)
    settings = request.app[SETTINGS]
    form = await read_search_form(request, settings)
    result = await request.app[SERVICE].search(form.query(settings))
    return web.json_response(reply_json(form.page_size(settings).told(result), settings))


async def action(request: web.Request) -> web.Response:
    check_origin(request)
    settings = request.app[SETTINGS]
    if request.content_length is not None and request.content_length > ACTION_BODY_BYTES:
        raise BadInputError("the action request is too long")
    raw = await read_capped(request, ACTION_BODY_BYTES)
    if raw is None:  # a chunked body (no length) past the cap: the rest is never read
        raise BadInputError("the action request is too long")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep
        raise BadInputError('send the action as JSON: {"id": "sa:more:<row>"}') from None
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise BadInputError('send the action as JSON: {"id": "sa:more:<row>"}')
    chosen = decode_action(body["id"])
    if chosen is None:
        raise BadInputError(f"unknown action {body['id'][:100]!r}: search again")
    size = limit_page_size(parse_limit(str(body.get("limit") or "")), settings)
    service = request.app[SERVICE]
    if isinstance(chosen, MoreLikeThis) and chosen.row >= await rows_in(service):
        raise BadInputError(f"there is no image at row {chosen.row} in this collection: search again")
    result = await run_action(service, chosen, size.value)
    if isinstance(chosen, MoreLikeThis):  # a next page keeps its search's page size
        result = size.told(result)
    return web.json_response(reply_json(result, settings))


async def read_capped(request: web.Request, cap: int) -> bytes | None:
    """The request body, or None as soon as more than `cap` bytes arrive (not read further)."""
    data = bytearray()
    while chunk := await request.content.read(cap + 1 - len(data)):
        data += chunk
        if len(data) > cap:
            return None
    return bytes(data)


async def rows_in(service: SearchService) -> int:
    return await asyncio.to_thread(lambda: service.store.info.rows)


async def image(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    row = int(request.match_info["row"])
    if row >= await rows_in(service):
        raise web.HTTPNotFound(reason=f"no image at row {row}")
    data = await service.stored_image(row)
    if not data:
        raise web.HTTPNotFound(reason=f"the dataset keeps no image for row {row}")
    etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": IMAGE_CACHE_CONTROL}
    if etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, content_type="image/jpeg", headers=headers)


def create_app(service: SearchService, settings: Settings, *, host: str | None = None) -> web.Application:
    """The page and its API over an open `SearchService`, bound to `host` (default `[web] host`)."""
    app = web.Application(
        middlewares=[errors_and_headers], client_max_size=max_body_bytes(settings)
    )
    bound = settings.web.host if host is None else host
    app[SERVICE] = service
    app[SETTINGS] = settings
    app[HOSTS] = allowed_hosts(settings, bound)
    app[ANY_IP] = bound in WILDCARD_HOSTS
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR, append_version=False)
    app.router.add_get("/api/config", config)
    app.router.add_post("/api/search", search)
    app.router.add_post("/api/action", action)
    app.router.add_get(r"/image/{row:\d{1,12}}", image)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_warning(host: str) -> str | None:
    """The warning to log when the page is reachable from other machines; None on loopback."""
    if is_loopback(host):
        return None
    return (
        f"the web page listens on {host}: anyone who can reach this address can search the "
        "collection and upload files (there is no login); use --host 127.0.0.1 to keep it local"
    )


@asynccontextmanager
async def running_web(
    service: SearchService, settings: Settings, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve the page on `host:port` (0: any free port) while inside; yields its base URL. On
    exit it takes no new requests and gives those in flight `[ops] shutdown_grace_seconds`."""
    if warning := bind_warning(host):
        log.warning("%s", warning)
    runner = web.AppRunner(create_app(service, settings, host=host), access_log=None,
                           shutdown_timeout=settings.ops.shutdown_grace_seconds)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield f"http://{shown}:{bound_port}"
    finally:
        await runner.cleanup()


async def serve_web(
    settings: Settings,
    *,
    host: str,
    port: int,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Open the search service and serve the page until `stop` is set (or SIGINT / SIGTERM).

    `on_ready` gets the base URL once the page is served (the port may have been 0).
    """
    from core.startup import open_search_service

    stop = stop or asyncio.Event()
    with stop_on_signals(stop):
        async with open_search_service(settings) as service:
            async with running_web(service, settings, host=host, port=port) as url:
                print(f"Search All: open {url}/ in a browser (Ctrl+C stops)", flush=True)
                if on_ready is not None:
                    on_ready(url)
                await stop.wait()


def run_web(settings: Settings, *, host: str, port: int) -> None:
    """`search-all web`: blocks until interrupted."""
    asyncio.run(serve_web(settings, host=host, port=port))
