"""A Slack-compatible server on 127.0.0.1 for end-to-end tests of the Slack bot.

It speaks the parts of Slack's protocol the bot uses, over real HTTP and WebSocket:

- Web API: `POST` (or `GET`) `/api/{method}` (form, JSON or query parameters; bearer token),
  recorded in `calls`. auth.test answers the bot's `user_id`; chat.postMessage a `ts`;
  files.getUploadURLExternal an upload URL on this server, whose POSTed bytes land in
  `uploads`; files.info the objects of `add_file`; apps.connections.open (app token only) a
  `ws://127.0.0.1:PORT/socket` URL. `fail_next(method, 429)` makes the next call of a method
  answer 429 with `Retry-After: 0`; `hold(method)` keeps its calls waiting until released.
- `response_url`s: `POST /response/{id}`, recorded in `responses`.
- Private files: `GET /files-pri/{id}/{name}` serves a file added with `add_file` to a request
  with the bot token; without it, like Slack, a 200 HTML sign-in page. Every GET is recorded in
  `file_gets` with its Authorization header.
- Socket Mode: the WebSocket at `/socket` sends `{"type": "hello"}`, then the envelopes given to
  `send_envelope`; acks received (`{"envelope_id": ...}`) are recorded in `acks`.
- Workspaces: `bot_token` belongs to `TEAM_ID`; `add_workspace` adds another team's token;
  `revoke` makes a token answer `token_revoked`. Every Web API call is checked against them, and
  auth.test answers the token's own team.
- OAuth (Slack's install flow): `GET /oauth/v2/authorize` (`authorize_url`) is an admin of
  the team given to `approve_next` clicking "Allow": recorded in `authorizations`, it redirects
  to the `redirect_uri` asked for (or `redirect_url`, the app's configured one) with a one-time
  `code` and the `state`; oauth.v2.access (the app's `client_id` / `client_secret`, as HTTP
  Basic auth or form fields) trades the code for that team's new bot token.

`signed_headers` signs a request body the way Slack does. Waits (`wait_for`) are bounded and
wake on the recorded event, never on a timer.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode

from aiohttp import WSMsgType, web
from slack_sdk.signature import SignatureVerifier

from tests.fakes.loopback import serve_on_loopback

BOT_USER_ID = "UBOTSEARCH"
BOT_ID = "BBOTSEARCH"
TEAM_ID = "T0TEST0001"
APP_ID = "A0TEST"
CLIENT_ID = "1111111111.2222222222"
CLIENT_SECRET = "fake-client-secret"
WAIT_S = 20.0


@dataclass(frozen=True)
class ApiCall:
    method: str
    params: dict[str, Any]
    token: str | None
    status: int
    at: float = field(default_factory=time.perf_counter)  # when the fake received it


@dataclass(frozen=True)
class FileGet:
    path: str
    authorization: str | None


@dataclass
class _StoredFile:
    data: bytes
    mimetype: str


@dataclass
class FakeSlack:
    bot_token: str
    app_token: str = "xapp-1-test"
    client_id: str = CLIENT_ID
    client_secret: str = CLIENT_SECRET
    redirect_url: str | None = None  # the app's Redirect URL, used when the flow names none
    authorizations: list[dict[str, str]] = field(default_factory=list)  # authorize page visits
    calls: list[ApiCall] = field(default_factory=list)
    uploads: dict[str, bytes] = field(default_factory=dict)
    responses: list[dict[str, Any]] = field(default_factory=list)
    file_gets: list[FileGet] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    posted_ts: list[str] = field(default_factory=list)  # the ts given to each chat.postMessage
    # Channels, members, admins, history (tests/fakes/slack_directory.py), when a test gives them.
    directory: Any = None

    def __post_init__(self) -> None:
        self._files: dict[str, _StoredFile] = {}
        self._file_objects: dict[str, dict[str, Any]] = {}
        self._failures: dict[str, list[int]] = {}
        self._gates: dict[str, asyncio.Event] = {}
        self._ids = itertools.count(1)
        self._teams: dict[str, str] = {self.bot_token: TEAM_ID}  # bot token -> its workspace
        self._revoked: set[str] = set()
        self._approving: list[str] = []  # teams whose admin approves the next authorize visits
        self._codes: dict[str, str] = {}  # one-time code -> team
        self._changed = asyncio.Condition()
        self._sockets: list[web.WebSocketResponse] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.add_routes(
            [
                web.post("/api/{method}", self._api),
                web.get("/api/{method}", self._api),
                web.post("/upload/{file_id}", self._upload),
                web.post("/response/{id}", self._response),
                web.get("/files-pri/{id}/{name}", self._file),
                web.get("/socket", self._socket),
                web.get("/oauth/v2/authorize", self._authorize),
            ]
        )
        self._runner, self.port = await serve_on_loopback(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for gate in self._gates.values():
            gate.set()
        for socket in self._sockets:
            await socket.close()
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api/"

    @property
    def authorize_url(self) -> str:
        return f"{self.base_url}/oauth/v2/authorize"

    # ------------------------------------------------------------------ test controls

    def add_file(
        self,
        name: str,
        data: bytes,
        mimetype: str,
        *,
        subtype: str | None = None,
        transcript: str | None = None,
    ) -> dict[str, Any]:
        """Store a file and return its Slack file object, as events carry it."""
        file_id = f"F{next(self._ids):09d}"
        self._files[file_id] = _StoredFile(data, mimetype)
        url = f"{self.base_url}/files-pri/{TEAM_ID}-{file_id}/{name}"
        obj: dict[str, Any] = {
            "id": file_id,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": name.rsplit(".", 1)[-1],
            "size": len(data),
            "url_private": url,
            "url_private_download": url + "?download=1",
            "file_access": "visible",
        }
        if subtype:
            obj["subtype"] = subtype
        if transcript is not None:
            obj["transcription"] = {
                "status": "complete",
                "locale": "en-US",
                "preview": {"content": transcript, "has_more": False},
            }
        self._file_objects[file_id] = dict(obj)
        return obj

    def add_workspace(self, team_id: str, bot_token: str) -> None:
        """Another workspace, with the app installed already under `bot_token`."""
        self._teams[bot_token] = team_id

    def revoke(self, token: str) -> None:
        self._revoked.add(token)

    def approve_next(self, team_id: str) -> None:
        """The next visit of the authorize page is an admin of `team_id` clicking "Allow"."""
        self._approving.append(team_id)

    def token_of(self, team_id: str) -> list[str]:
        """The bot tokens the fake has issued or knows for `team_id`."""
        return [token for token, team in self._teams.items() if team == team_id]

    def response_url(self, name: str) -> str:
        return f"{self.base_url}/response/{name}"

    def fail_next(self, method: str, status: int = 429) -> None:
        self._failures.setdefault(method, []).append(status)

    def hold(self, method: str) -> asyncio.Event:
        """Calls of `method` wait, unanswered, until the returned event is set."""
        gate = self._gates[method] = asyncio.Event()
        return gate

    def calls_to(self, method: str) -> list[ApiCall]:
        return [c for c in self.calls if c.method == method and c.status == 200]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    async def wait_for_calls(self, method: str, count: int = 1) -> list[ApiCall]:
        await self.wait_for(lambda: len(self.calls_to(method)) >= count)
        return self.calls_to(method)

    async def send_envelope(self, kind: str, payload: Mapping[str, Any], *, retry_attempt: int = 0) -> str:
        """Send a Socket Mode envelope to the connected app; returns its envelope_id."""
        await self.wait_for(lambda: bool(self._sockets))
        envelope_id = f"env-{next(self._ids)}"
        envelope = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": dict(payload),
            "accepts_response_payload": kind != "events_api",
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
        }
        await self._sockets[-1].send_str(json.dumps(envelope))
        return envelope_id

    async def _record(self, append: Callable[[], None]) -> None:
        async with self._changed:
            append()
            self._changed.notify_all()

    # ------------------------------------------------------------------ handlers

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            params.update(await request.json())
        elif request.can_read_body:
            params.update(parse_qsl((await request.read()).decode()))
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else params.get("token")
        if auth.startswith("Basic "):  # oauth.v2.access: the app's client id and secret
            client_id, _, client_secret = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
            params.setdefault("client_id", client_id)
            params.setdefault("client_secret", client_secret)
        if method in self._gates:
            await self._gates[method].wait()
        failures = self._failures.get(method)
        status = failures.pop(0) if failures else 200
        await self._record(lambda: self.calls.append(ApiCall(method, params, token, status)))
        if status == 429:
            return web.json_response(
                {"ok": False, "error": "ratelimited"}, status=429, headers={"Retry-After": "0"}
            )
        if status != 200:
            return web.json_response({"ok": False, "error": "fatal_error"}, status=status)
        if method == "oauth.v2.access":
            return web.json_response(self._exchange(params))
        if token in self._revoked:
            return web.json_response({"ok": False, "error": "token_revoked"})
        if method == "apps.connections.open":
            if token != self.app_token:
                error = "not_allowed_token_type" if token in self._teams else "invalid_auth"
                return web.json_response({"ok": False, "error": error})
        elif token not in self._teams:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        return web.json_response(self._answer(method, params, self._teams.get(token or "", "")))

    def _exchange(self, params: dict[str, Any]) -> dict[str, Any]:
        """oauth.v2.access: a code the authorize page gave out, once, for the app's credentials."""
        if params.get("client_id") != self.client_id:
            return {"ok": False, "error": "invalid_client_id"}
        if params.get("client_secret") != self.client_secret:
            return {"ok": False, "error": "bad_client_secret"}
        team = self._codes.pop(str(params.get("code")), None)
        if team is None:
            return {"ok": False, "error": "invalid_code"}
        token = f"xoxb-{team}-{next(self._ids)}"
        self._teams[token] = team
        return {
            "ok": True,
            "app_id": APP_ID,
            "authed_user": {"id": "U0INSTALLER"},
            "scope": "app_mentions:read,chat:write,commands,files:read,files:write,im:history",
            "token_type": "bot",
            "access_token": token,
            "bot_user_id": BOT_USER_ID,
            "team": {"id": team, "name": f"team {team}"},
            "enterprise": None,
            "is_enterprise_install": False,
        }

    def _answer(self, method: str, params: dict[str, Any], team: str) -> dict[str, Any]:
        n = next(self._ids)
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://test.slack.com/",
                "team": "test",
                "user": "search-all",
                "team_id": team,
                "user_id": BOT_USER_ID,
                "bot_id": BOT_ID,
                "is_enterprise_install": False,
            }
        if method == "chat.postMessage":
            ts = f"{int(time.time())}.{n:06d}"
            self.posted_ts.append(ts)
            return {
                "ok": True,
                "channel": params.get("channel"),
                "ts": ts,
                "message": {"type": "message", "text": params.get("text"), "ts": ts, "bot_id": BOT_ID},
            }
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": f"{int(time.time())}.{n:06d}"}
        if method == "files.getUploadURLExternal":
            file_id = f"FUP{n:08d}"
            return {"ok": True, "upload_url": f"{self.base_url}/upload/{file_id}", "file_id": file_id}
        if method == "files.completeUploadExternal":
            files = params.get("files")
            files = json.loads(files) if isinstance(files, str) else files
            return {"ok": True, "files": [{"id": f["id"], "title": f.get("title")} for f in files]}
        if method == "files.info":
            stored = self._file_objects.get(str(params.get("file")))
            return {"ok": True, "file": stored} if stored else {"ok": False, "error": "file_not_found"}
        if method == "apps.connections.open":
            return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/socket?ticket=t{n}"}
        if self.directory is not None and (found := self.directory.answer(method, params, team)) is not None:
            return found
        return {"ok": False, "error": "unknown_method"}

    async def _upload(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        data = await request.read()
        await self._record(lambda: self.uploads.__setitem__(file_id, data))
        return web.Response(text=f"OK - {len(data)}")

    async def _response(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["_url_id"] = request.match_info["id"]
        await self._record(lambda: self.responses.append(body))
        return web.Response(text="ok")

    async def _file(self, request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization")
        await self._record(lambda: self.file_gets.append(FileGet(request.path, authorization)))
        file_id = request.match_info["id"].rsplit("-", 1)[-1]
        stored = self._files.get(file_id)
        token = (authorization or "").removeprefix("Bearer ")
        if token not in self._teams or token in self._revoked or stored is None:
            return web.Response(text="<html><body>Sign in to Slack</body></html>", content_type="text/html")
        return web.Response(body=stored.data, content_type=stored.mimetype)

    async def _authorize(self, request: web.Request) -> web.Response:
        """Slack's "Allow" page, approved by an admin of the team given to `approve_next`."""
        query = dict(request.query)
        await self._record(lambda: self.authorizations.append(query))
        redirect = query.get("redirect_uri") or self.redirect_url
        if query.get("client_id") != self.client_id or not redirect:
            return web.Response(status=400, text="invalid_client_id or no redirect URL")
        if not self._approving:
            raise web.HTTPFound(f"{redirect}?{urlencode({'error': 'access_denied', 'state': query.get('state', '')})}")
        code = f"code-{next(self._ids)}"
        self._codes[code] = self._approving.pop(0)
        raise web.HTTPFound(f"{redirect}?{urlencode({'code': code, 'state': query.get('state', '')})}")

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.send_str(
            json.dumps({"type": "hello", "num_connections": 1, "debug_info": {"host": "fake"}})
        )
        await self._record(lambda: self._sockets.append(socket))
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                ack = json.loads(message.data)
                await self._record(lambda ack=ack: self.acks.append(ack))
        return socket


class RecordingHost:
    """Another host (a different port on 127.0.0.1): records every request it gets."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization)
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner, self.port = await serve_on_loopback(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _any(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, request.headers.get("Authorization")))
        return web.Response(body=b"\xff\xd8\xff", content_type="image/jpeg")


# ---------------------------------------------------------------------- requests Slack sends


def signed_headers(secret: str, body: str, *, timestamp: int | None = None, **extra: str) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(timestamp), body=body)
    return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": signature, **extra}


def command_payload(
    text: str, *, user: str, channel: str, response_url: str, team: str = TEAM_ID
) -> dict[str, str]:
    return {
        "token": "legacy-verification-token",
        "team_id": team,
        "team_domain": "test",
        "channel_id": channel,
        "channel_name": "general",
        "user_id": user,
        "user_name": "someone",
        "command": "/search",
        "text": text,
        "api_app_id": "A0TEST",
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": "1.2.3",
    }


def command_body(text: str, *, user: str, channel: str, response_url: str, team: str = TEAM_ID) -> str:
    return urlencode(command_payload(text, user=user, channel=channel, response_url=response_url, team=team))


def event_payload(event: dict[str, Any], *, event_id: str, team: str = TEAM_ID) -> dict[str, Any]:
    return {
        "token": "legacy-verification-token",
        "team_id": team,
        "api_app_id": "A0TEST",
        "event": event,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(time.time()),
        "authorizations": [{"team_id": team, "user_id": BOT_USER_ID, "is_bot": True}],
    }


def message_event(
    kind: str,
    text: str,
    *,
    user: str,
    channel: str,
    ts: str,
    files: list[dict[str, Any]] | None = None,
    team: str = TEAM_ID,
) -> dict[str, Any]:
    """An `app_mention` (kind "app_mention") or DM (`message`, channel_type "im") event."""
    event: dict[str, Any] = {
        "type": kind,
        "user": user,
        "text": text,
        "ts": ts,
        "channel": channel,
        "team": team,
        "event_ts": ts,
    }
    if kind == "message":
        event["channel_type"] = "im"
    if files:
        event["files"] = files
        if kind == "message":
            event["subtype"] = "file_share"
    return event


def button_body(value: str, *, user: str, channel: str, message_ts: str, thread_ts: str | None = None) -> str:
    message: dict[str, Any] = {"type": "message", "ts": message_ts, "bot_id": BOT_ID, "user": BOT_USER_ID}
    if thread_ts:
        message["thread_ts"] = thread_ts
    payload = {
        "type": "block_actions",
        "team": {"id": TEAM_ID, "domain": "test"},
        "user": {"id": user, "team_id": TEAM_ID},
        "api_app_id": "A0TEST",
        "token": "legacy-verification-token",
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel,
            "is_ephemeral": False,
        },
        "trigger_id": "1.2.3",
        "channel": {"id": channel, "name": "general"},
        "message": message,
        "response_url": "https://hooks.invalid/actions/unused",
        "actions": [
            {"action_id": value, "block_id": "b", "value": value, "type": "button", "action_ts": "1.2"}
        ],
    }
    return urlencode({"payload": json.dumps(payload)})
