"""A Discord-compatible gateway, REST API and CDN on 127.0.0.1, for end-to-end tests.

The real discord.py client talks to it unchanged (pointed at it with `[discord] api_base_url`
and `gateway_url`). It speaks the parts of the protocol the bot uses, records every call with a
timestamp, and enforces the rules the bot must respect, answering as Discord does:

- an interaction must be acknowledged within 3 s (`ACK_SECONDS`), else 404 code 10062 "Unknown
  interaction"; a second acknowledgement is 400 code 40060;
- its token (followups, edits) lives 15 min (`TOKEN_SECONDS`), after which 401 code 50027
  "Invalid Webhook Token"; a followup before any acknowledgement is 404 code 10015;
- after a deferred ("thinking") acknowledgement, the first followup replaces the thinking
  message and keeps the defer's visibility (ephemeral or not), whatever flags it sends;
- a message has at most 10 embeds, 10 files, 5 rows of 5 buttons, custom ids of 100 characters,
  and its uploads fit the interaction's `attachment_size_limit` (10 MiB for channel messages),
  else 400 code 50035 or 413 code 40005;
- REST calls need the bot token (401 otherwise), the gateway closes with 4004 on a wrong token and
  with 4014 when the Message Content intent is requested but not enabled for the app; without
  that intent, guild messages that do not mention the bot arrive without content or files;
- `rate_limit_once` answers the next matching call with 429, `retry_after` and a `Via` header.

Servers, roles and private channels (channel memory's tests): `add_guild`, `add_role`,
`add_channel(private_to=role)` (permission overwrites: @everyone denied View Channel, the role
allowed), and members with `roles=` in `slash_command` / `user_message`, so discord.py computes
each member's permissions itself. Messages users post are kept per channel and served by
`GET /channels/{id}/messages` (`before`, `limit`, newest first); `delete_message`,
`edit_message`, `delete_channel` and `remove_guild` dispatch MESSAGE_DELETE, MESSAGE_UPDATE,
CHANNEL_DELETE and GUILD_DELETE.

Its clock (`now`) can be moved forward (`advance`) so expiry is tested without waiting. Replies
use exactly `Content-Type: application/json` (discord.py rejects a charset), and ids are
time-based snowflakes (discord.py derives creation times from them).
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes.loopback import serve_on_loopback

DISCORD_EPOCH_MS = 1_420_070_400_000
ACK_SECONDS = 3.0
TOKEN_SECONDS = 15 * 60.0
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
MESSAGE_CONTENT_INTENT = 1 << 15
PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | MESSAGE_CONTENT_INTENT  # members, presences, content
EPHEMERAL = 1 << 6
VOICE_MESSAGE = 1 << 13
VIEW_CHANNEL = 1 << 10
READ_MESSAGE_HISTORY = 1 << 16
EVERYONE_PERMISSIONS = "2248473465835073"  # view, send, read history, ... (no manage_*)

Json = dict[str, Any]


@dataclass(frozen=True)
class Upload:
    """A file sent to the fake in a multipart body."""

    filename: str
    data: bytes
    content_type: str


@dataclass
class Call:
    """One REST request as received (and how it was answered)."""

    method: str
    path: str
    at: float  # the fake's clock
    query: dict[str, str]
    body: Json | None
    files: list[Upload]
    status: int = 0
    known: bool = True  # False: no such route in the fake


@dataclass
class Posted:
    """A message the bot created (or a message of the fake's users)."""

    id: int
    channel_id: int
    body: Json
    files: list[Upload]
    ephemeral: bool
    interaction_id: int | None = None
    reference: int | None = None
    edits: int = 0
    deleted: bool = False
    loading: bool = False  # a deferred "thinking" message not replaced yet
    attachments: list[Json] = field(default_factory=list)  # as served back, with CDN URLs

    @property
    def content(self) -> str:
        return self.body.get("content") or ""

    @property
    def embeds(self) -> list[Json]:
        return self.body.get("embeds") or []

    @property
    def components(self) -> list[Json]:
        return self.body.get("components") or []

    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for row in self.components for c in row.get("components", []) if "custom_id" in c]

    def button(self, label: str) -> str:
        for row in self.components:
            for component in row.get("components", []):
                if component.get("label") == label:
                    return component["custom_id"]
        raise KeyError(f"no button {label!r} in {self.custom_ids()}")


@dataclass
class Interaction:
    id: int
    token: str
    type: int
    payload: Json
    created: float  # the fake's clock
    ack_type: int | None = None
    ack_at: float | None = None
    ack_ephemeral: bool = False
    original: Posted | None = None
    messages: list[Posted] = field(default_factory=list)  # created for it, in order


@dataclass
class _Session:
    ws: web.WebSocketResponse
    intents: int = 0
    seq: int = 0
    ready: bool = False


@dataclass
class _RateLimit:
    method: str
    pattern: re.Pattern[str]
    retry_after: float


CALL = web.RequestKey("call", Call)


class DiscordError(Exception):
    def __init__(self, status: int, code: int, message: str):
        self.status, self.code, self.message = status, code, message


def iso(ts: float | None = None) -> str:
    return datetime.datetime.fromtimestamp(ts or time.time(), datetime.UTC).isoformat()


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly "application/json": discord.py does not parse a body whose type carries a charset.
    return web.Response(
        body=json.dumps(data).encode(), status=status, headers={"Content-Type": "application/json", **(headers or {})}
    )


def error_response(error: DiscordError) -> web.Response:
    return json_response({"code": error.code, "message": error.message}, error.status)


class FakeDiscord:
    """Start with `async with FakeDiscord(token) as fake:`; see the module docstring."""

    def __init__(self, token: str, *, message_content_enabled: bool = True):
        self.token = token
        self.message_content_enabled = message_content_enabled
        self._offset = 0.0
        self._counter = itertools.count(1)
        self.app_id = self.snowflake()
        self.bot_user = self.user(self.app_id, "search-all", bot=True)
        self.guild_id = self.snowflake()
        self.channel_id = self.snowflake()
        self.other_channel_id = self.snowflake()
        # every server: its name, roles (the first is @everyone) and channels (payloads)
        self.guilds: dict[int, Json] = {}
        self._guild_of: dict[int, int] = {}  # channel id -> guild id
        self.history: dict[int, list[Json]] = {}  # channel id -> messages users posted, oldest first
        self._add_guild_state(self.guild_id, "fake guild", [self.channel_id, self.other_channel_id])
        self.calls: list[Call] = []
        self.identifies: list[Json] = []
        self.commands: dict[str, list[Json]] = {}  # "global" or a guild id -> synced commands
        self.messages: dict[int, Posted] = {}
        self.interactions: dict[int, Interaction] = {}
        self._by_token: dict[str, Interaction] = {}
        self._cdn: dict[int, tuple[str, bytes, str]] = {}
        self._sessions: list[_Session] = []
        self._rate_limits: list[_RateLimit] = []
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> FakeDiscord:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._record])
        app.router.add_get("/ws", self._gateway)
        app.router.add_get("/attachments/{channel}/{id}/{filename}", self._cdn_get)
        api = "/api/v10"
        routes = [
            ("GET", "/users/@me", self._me),
            ("GET", "/oauth2/applications/@me", self._application),
            ("GET", "/gateway", self._gateway_url),
            ("PUT", "/applications/{app}/commands", self._put_commands),
            ("PUT", "/applications/{app}/guilds/{guild}/commands", self._put_commands),
            ("POST", "/interactions/{id}/{token}/callback", self._callback),
            ("POST", "/webhooks/{app}/{token}", self._followup),
            ("PATCH", "/webhooks/{app}/{token}/messages/{message}", self._edit_webhook_message),
            ("DELETE", "/webhooks/{app}/{token}/messages/{message}", self._delete_webhook_message),
            ("POST", "/channels/{channel}/messages", self._channel_message),
            ("POST", "/channels/{channel}/typing", self._typing),
            ("GET", "/channels/{channel}/messages", self._channel_history),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, api + path, handler)
        self._runner, self.port = await serve_on_loopback(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in list(self._sessions):
            await session.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base_url(self) -> str:
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def cdn_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ time and ids

    def now(self) -> float:
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward (expiry tests without waiting)."""
        self._offset += seconds

    def snowflake(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return (ms << 22) | (1 << 17) | (next(self._counter) & 0xFFF)

    # ------------------------------------------------------------------ test controls

    def rate_limit_once(self, method: str, path_regex: str, retry_after: float) -> None:
        """Answer the next `method` call whose path matches with 429 (and a `Via` header)."""
        self._rate_limits.append(_RateLimit(method, re.compile(path_regex), retry_after))

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 20.0) -> Any:
        """Wait (bounded) until `predicate()` is truthy; re-checked after every recorded change."""
        async with self._changed:
            return await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def calls_to(self, method: str, path_regex: str) -> list[Call]:
        pattern = re.compile(path_regex)
        return [c for c in self.calls if c.method == method and pattern.search(c.path)]

    def unknown_calls(self) -> list[Call]:
        return [c for c in self.calls if not c.known]

    def cdn_gets(self, attachment: Json) -> list[Call]:
        return [c for c in self.calls if c.method == "GET" and c.path.startswith("/attachments/") and
                c.path.split("/")[3] == str(attachment["id"])]

    # ------------------------------------------------------------------ payloads

    def user(self, user_id: int, name: str = "user", *, bot: bool = False) -> Json:
        data: Json = {"id": str(user_id), "username": name, "discriminator": "0", "global_name": name,
                      "avatar": None, "public_flags": 0}
        if bot:
            data["bot"] = True
        return data

    def member(self, user: Json, roles: list[int] | tuple[int, ...] = ()) -> Json:
        return {"user": user, "roles": [str(r) for r in roles], "joined_at": iso(), "deaf": False, "mute": False,
                "flags": 0, "permissions": EVERYONE_PERMISSIONS, "nick": None, "avatar": None}

    def channel(self, channel_id: int) -> Json:
        guild_id = self._guild_of.get(channel_id, self.guild_id)
        for known in self.guilds.get(guild_id, {}).get("channels", []):
            if known["id"] == str(channel_id):
                return known
        return {"id": str(channel_id), "type": 0, "guild_id": str(guild_id), "name": f"c{channel_id % 1000}",
                "position": 0, "permission_overwrites": [], "nsfw": False, "parent_id": None,
                "rate_limit_per_user": 0, "topic": None, "last_message_id": None, "flags": 0}

    def guild_of(self, channel_id: int) -> int:
        return self._guild_of.get(channel_id, self.guild_id)

    def _add_guild_state(self, guild_id: int, name: str, channel_ids: list[int]) -> None:
        everyone = {"id": str(guild_id), "name": "@everyone", "permissions": EVERYONE_PERMISSIONS,
                    "position": 0, "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0}
        self.guilds[guild_id] = {"name": name, "roles": [everyone], "channels": [],
                                 "owner_id": str(self.snowflake())}
        for channel_id in channel_ids:
            self._guild_of[channel_id] = guild_id
            self.guilds[guild_id]["channels"].append(self.channel(channel_id))

    def add_guild(self, name: str = "another guild") -> tuple[int, int]:
        """A new server with one text channel: `(guild id, channel id)`. Add servers before the bot
        connects (they come in READY)."""
        guild_id, channel_id = self.snowflake(), self.snowflake()
        self._add_guild_state(guild_id, name, [channel_id])
        return guild_id, channel_id

    def add_role(self, guild_id: int, name: str, permissions: int = 0) -> int:
        role_id = self.snowflake()
        self.guilds[guild_id]["roles"].append(
            {"id": str(role_id), "name": name, "permissions": str(permissions), "position": len(
                self.guilds[guild_id]["roles"]), "color": 0, "hoist": False, "managed": False,
             "mentionable": False, "flags": 0})
        return role_id

    def add_channel(self, guild_id: int, *, private_to: int | None = None) -> int:
        """A text channel; `private_to`: only that role may view it and read its history."""
        channel_id = self.snowflake()
        self._guild_of[channel_id] = guild_id
        payload = self.channel(channel_id)
        if private_to is not None:
            payload["permission_overwrites"] = [
                {"id": str(guild_id), "type": 0, "allow": "0", "deny": str(VIEW_CHANNEL)},
                {"id": str(private_to), "type": 0, "allow": str(VIEW_CHANNEL | READ_MESSAGE_HISTORY), "deny": "0"},
            ]
        self.guilds[guild_id]["channels"].append(payload)
        return channel_id

    async def create_channel(self, guild_id: int, *, private_to: int | None = None) -> int:
        """`add_channel` while the bot is connected: CHANNEL_CREATE dispatched."""
        channel_id = self.add_channel(guild_id, private_to=private_to)
        await self.dispatch("CHANNEL_CREATE", self.channel(channel_id))
        return channel_id

    def dm_channel_id(self, user_id: int) -> int:
        return user_id | (1 << 12)  # a distinct process id: never one of the fake's snowflakes

    def dm_channel(self, user: Json) -> Json:
        return {"id": str(self.dm_channel_id(int(user["id"]))), "type": 1, "recipients": [user],
                "last_message_id": None, "flags": 0}

    def guild(self, guild_id: int | None = None) -> Json:
        guild_id = guild_id or self.guild_id
        state = self.guilds[guild_id]
        return {
            "id": str(guild_id), "name": state["name"], "icon": None, "owner_id": state["owner_id"],
            "roles": state["roles"], "emojis": [], "stickers": [], "features": [], "large": False,
            "member_count": 2, "members": [self.member(self.bot_user)],
            "channels": state["channels"],
            "threads": [], "presences": [], "voice_states": [], "stage_instances": [],
            "guild_scheduled_events": [], "unavailable": False, "premium_tier": 0, "mfa_level": 0,
            "verification_level": 0, "explicit_content_filter": 0, "default_message_notifications": 0,
            "system_channel_flags": 0, "preferred_locale": "en-US", "nsfw_level": 0,
            "premium_progress_bar_enabled": False, "joined_at": iso(), "afk_timeout": 300,
        }

    def upload(self, filename: str, data: bytes, content_type: str | None, *, channel_id: int | None = None,
               url: str | None = None, size: int | None = None, voice: bool = False) -> Json:
        """An attachment payload served by the fake CDN (or pointing at `url` instead)."""
        attachment_id = self.snowflake()
        channel = channel_id or self.channel_id
        self._cdn[attachment_id] = (filename, data, content_type or "application/octet-stream")
        cdn_url = url or f"{self.base_url}/attachments/{channel}/{attachment_id}/{filename}"
        payload: Json = {"id": str(attachment_id), "filename": filename, "size": len(data) if size is None else size,
                         "url": cdn_url, "proxy_url": cdn_url}
        if content_type:
            payload["content_type"] = content_type
        if voice:
            payload.update(duration_secs=1.5, waveform="AAAAAAAA", flags=0)
        return payload

    def _serve_files(self, posted: Posted, files: list[Upload]) -> list[Json]:
        """Attachment payloads for files the bot uploaded; the fake CDN serves them."""
        served = []
        for upload in files:
            attachment_id = self.snowflake()
            self._cdn[attachment_id] = (upload.filename, upload.data, upload.content_type)
            url = f"{self.base_url}/attachments/{posted.channel_id}/{attachment_id}/{upload.filename}"
            served.append({"id": str(attachment_id), "filename": upload.filename, "size": len(upload.data),
                           "url": url, "proxy_url": url, "content_type": upload.content_type})
        return served

    def message_payload(self, posted: Posted, author: Json | None = None) -> Json:
        data: Json = {
            "id": str(posted.id), "channel_id": str(posted.channel_id), "type": 0 if posted.reference is None else 19,
            "content": posted.content, "author": author or self.bot_user, "attachments": posted.attachments,
            "embeds": posted.embeds, "components": posted.components, "mentions": [], "mention_roles": [],
            "mention_everyone": False, "pinned": False, "tts": False, "timestamp": iso(), "edited_timestamp": None,
            "flags": (EPHEMERAL if posted.ephemeral else 0) | int(posted.body.get("flags") or 0) & ~EPHEMERAL,
        }
        if posted.interaction_id is None:
            data["guild_id"] = str(self.guild_of(posted.channel_id))
        if posted.reference is not None:
            data["message_reference"] = {"message_id": str(posted.reference), "channel_id": str(posted.channel_id)}
        return data

    # ------------------------------------------------------------------ driving the bot

    async def wait_connected(self, count: int = 1, timeout: float = 20.0) -> None:
        await self.wait_for(lambda: sum(s.ready for s in self._sessions) >= count, timeout)

    async def drop_gateway(self) -> None:
        """Close every gateway connection (a network drop); a RESUME afterwards is left unanswered."""
        for session in list(self._sessions):
            await session.ws.close()

    async def dispatch(self, event: str, data: Json) -> None:
        """Send a gateway event to every identified session."""
        sessions = [s for s in self._sessions if s.ready]
        if not sessions:
            raise RuntimeError("no bot is connected to the fake gateway")
        for session in sessions:
            await self._send_event(session, event, data)

    def new_interaction(self, itype: int, data: Json, *, user: Json, channel_id: int | None, dm: bool = False,
                     message: Json | None = None, upload_limit: int = DEFAULT_UPLOAD_LIMIT,
                     roles: tuple[int, ...] = ()) -> Interaction:
        """An interaction the fake will accept callbacks for (not dispatched: see `slash_command`)."""
        interaction_id = self.snowflake()
        token = "itoken-" + secrets.token_urlsafe(24)
        payload: Json = {
            "id": str(interaction_id), "application_id": str(self.app_id), "type": itype, "data": data,
            "token": token, "version": 1, "locale": "en-US", "attachment_size_limit": upload_limit,
            "app_permissions": "2248473465835073", "entitlements": [], "authorizing_integration_owners": {},
        }
        if dm:
            payload["user"] = user
            payload["channel"] = self.dm_channel(user)
            payload["channel_id"] = payload["channel"]["id"]
            payload["context"] = 1
        else:
            payload["guild_id"] = str(self.guild_of(channel_id or self.channel_id))
            payload["member"] = self.member(user, roles)
            payload["channel"] = self.channel(channel_id or self.channel_id)
            payload["channel_id"] = payload["channel"]["id"]
            payload["guild_locale"] = "en-US"
            payload["context"] = 0
        if message is not None:
            payload["message"] = message
        interaction = Interaction(interaction_id, token, itype, payload, self.now())
        self.interactions[interaction_id] = interaction
        self._by_token[token] = interaction
        return interaction

    async def slash_command(self, user_id: int, options: Json, *, name: str = "search",
                            attachments: dict[str, Json] | None = None, channel_id: int | None = None,
                            dm: bool = False, upload_limit: int = DEFAULT_UPLOAD_LIMIT,
                            subcommand: str | None = None, roles: tuple[int, ...] = ()) -> Interaction:
        """A `/name` command (`/name subcommand` with `subcommand`); `options` maps option names to
        values (attachments by payload); `roles`: the member's roles."""
        attachments = attachments or {}
        command_options = [{"name": k, "type": 3 if isinstance(v, str) else 4, "value": v} for k, v in options.items()]
        command_options += [{"name": k, "type": 11, "value": a["id"]} for k, a in attachments.items()]
        if subcommand is not None:
            command_options = [{"name": subcommand, "type": 1, "options": command_options}]
        data: Json = {"id": str(self.snowflake()), "name": name, "type": 1, "options": command_options}
        if attachments:
            data["resolved"] = {"attachments": {a["id"]: a for a in attachments.values()}}
        interaction = self.new_interaction(2, data, user=self.user(user_id), channel_id=channel_id, dm=dm,
                                        upload_limit=upload_limit, roles=roles)
        await self.dispatch("INTERACTION_CREATE", interaction.payload)
        return interaction

    async def context_menu(self, user_id: int, name: str, target: Json, *,
                           channel_id: int | None = None) -> Interaction:
        """A message context menu command on `target` (a message payload)."""
        data = {"id": str(self.snowflake()), "name": name, "type": 3, "target_id": target["id"],
                "resolved": {"messages": {target["id"]: target}}}
        interaction = self.new_interaction(2, data, user=self.user(user_id), channel_id=channel_id)
        await self.dispatch("INTERACTION_CREATE", interaction.payload)
        return interaction

    async def click(self, user_id: int, message: Posted, custom_id: str, *,
                    roles: tuple[int, ...] = ()) -> Interaction:
        """A button press on one of the bot's messages."""
        data = {"custom_id": custom_id, "component_type": 2}
        interaction = self.new_interaction(3, data, user=self.user(user_id), channel_id=message.channel_id,
                                        message=self.message_payload(message), roles=roles)
        await self.dispatch("INTERACTION_CREATE", interaction.payload)
        return interaction

    def user_message(self, user_id: int, content: str, *, attachments: list[Json] | None = None,
                     channel_id: int | None = None, mention: bool = False, dm: bool = False,
                     voice: bool = False, roles: tuple[int, ...] = ()) -> Json:
        """A message payload by a user (not dispatched: see `send_message`)."""
        author = self.user(user_id)
        message_id = self.snowflake()
        data: Json = {
            "id": str(message_id), "type": 0, "author": author, "content": content,
            "attachments": attachments or [], "embeds": [], "components": [], "mentions": [],
            "mention_roles": [], "mention_everyone": False, "pinned": False, "tts": False,
            "timestamp": iso(), "edited_timestamp": None, "flags": VOICE_MESSAGE if voice else 0,
        }
        if mention:
            data["mentions"] = [self.bot_user]
            data["content"] = f"<@{self.app_id}> {content}".strip()
        if dm:
            data["channel_id"] = self.dm_channel(author)["id"]
        else:
            data["channel_id"] = str(channel_id or self.channel_id)
            data["guild_id"] = str(self.guild_of(int(data["channel_id"])))
            data["member"] = {k: v for k, v in self.member(author, roles).items() if k != "user"}
            self.history.setdefault(int(data["channel_id"]), []).append(data)
        self.messages[message_id] = Posted(message_id, int(data["channel_id"]), data, [], False)
        return data

    async def delete_message(self, message: Json) -> None:
        """A user's message deleted: gone from the history, MESSAGE_DELETE dispatched."""
        channel_id = int(message["channel_id"])
        self.history[channel_id] = [m for m in self.history.get(channel_id, []) if m["id"] != message["id"]]
        data = {"id": message["id"], "channel_id": message["channel_id"]}
        if "guild_id" in message:
            data["guild_id"] = message["guild_id"]
        await self.dispatch("MESSAGE_DELETE", data)

    async def edit_message(self, message: Json, *, attachments: list[Json]) -> Json:
        """A user's message edited to keep only `attachments`: MESSAGE_UPDATE dispatched."""
        message["attachments"] = attachments
        message["edited_timestamp"] = iso()
        await self.dispatch("MESSAGE_UPDATE", message)
        return message

    async def delete_channel(self, channel_id: int) -> None:
        guild = self.guilds[self.guild_of(channel_id)]
        payload = self.channel(channel_id)
        guild["channels"] = [c for c in guild["channels"] if c["id"] != str(channel_id)]
        await self.dispatch("CHANNEL_DELETE", payload)

    async def remove_guild(self, guild_id: int) -> None:
        """The bot removed from a server (kicked, or the server deleted): GUILD_DELETE."""
        await self.dispatch("GUILD_DELETE", {"id": str(guild_id)})

    async def send_message(self, message: Json) -> None:
        """Dispatch MESSAGE_CREATE; without the Message Content intent, guild messages that do not
        mention the bot lose their content and files, as on Discord."""
        for session in [s for s in self._sessions if s.ready]:
            data = message
            mentioned = any(u["id"] == str(self.app_id) for u in message["mentions"])
            if "guild_id" in message and not mentioned and not session.intents & MESSAGE_CONTENT_INTENT:
                data = {**message, "content": "", "attachments": [], "embeds": [], "components": []}
            await self._send_event(session, "MESSAGE_CREATE", data)

    def replies_to(self, message: Json) -> list[Posted]:
        return [p for p in self.messages.values() if p.reference == int(message["id"])]

    # ------------------------------------------------------------------ gateway

    async def _send_event(self, session: _Session, event: str, data: Json) -> None:
        session.seq += 1
        await session.ws.send_str(json.dumps({"op": 0, "t": event, "s": session.seq, "d": data}))

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        session = _Session(ws)
        self._sessions.append(session)
        try:
            await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                payload = json.loads(msg.data)
                if payload["op"] == 1:
                    await ws.send_str(json.dumps({"op": 11}))
                elif payload["op"] == 2:
                    await self._identify(session, payload["d"])
        finally:
            self._sessions.remove(session)
            await self._notify()
        return ws

    async def _identify(self, session: _Session, data: Json) -> None:
        self.identifies.append({k: v for k, v in data.items() if k != "token"})
        if data.get("token") != self.token:
            await session.ws.close(code=4004, message=b"Authentication failed.")
            return
        session.intents = int(data.get("intents", 0))
        privileged = session.intents & PRIVILEGED_INTENTS
        if privileged and (privileged != MESSAGE_CONTENT_INTENT or not self.message_content_enabled):
            await session.ws.close(code=4014, message=b"Disallowed intent(s).")
            await self._notify()
            return
        ready = {
            "v": 10, "user": self.bot_user, "guilds": [{"id": str(g), "unavailable": True} for g in self.guilds],
            "session_id": secrets.token_hex(16), "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.app_id), "flags": 0}, "private_channels": [], "relationships": [],
        }
        await self._send_event(session, "READY", ready)
        for guild_id in self.guilds:
            await self._send_event(session, "GUILD_CREATE", self.guild(guild_id))
        session.ready = True
        await self._notify()

    # ------------------------------------------------------------------ REST plumbing

    @web.middleware
    async def _record(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if request.path == "/ws":
            return await handler(request)
        body, files = await self._read_body(request)
        call = Call(request.method, request.path, self.now(), dict(request.query), body, files)
        self.calls.append(call)
        request[CALL] = call
        try:
            response = await self._answer(request, handler, call)
        finally:
            await self._notify()
        call.status = response.status
        return response

    async def _answer(self, request: web.Request, handler: Callable[..., Any], call: Call) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            if request.headers.get("Authorization") != f"Bot {self.token}" and "/webhooks/" not in request.path \
                    and "/interactions/" not in request.path:
                return json_response({"code": 0, "message": "401: Unauthorized"}, 401)
            for limit in self._rate_limits:
                if limit.method == request.method and limit.pattern.search(request.path):
                    self._rate_limits.remove(limit)
                    body = {"message": "You are being rate limited.", "retry_after": limit.retry_after,
                            "global": False}
                    headers = {"Via": "1.1 google", "Retry-After": str(limit.retry_after),
                               "X-RateLimit-Scope": "user"}
                    return json_response(body, 429, headers)
        try:
            return await handler(request)
        except DiscordError as error:
            return error_response(error)
        except web.HTTPNotFound:
            call.known = False
            return json_response({"code": 0, "message": "404: Not Found"}, 404)

    async def _read_body(self, request: web.Request) -> tuple[Json | None, list[Upload]]:
        if request.content_type == "application/json":
            return await request.json(), []
        if request.content_type != "multipart/form-data":
            return None, []
        body: Json | None = None
        files: list[Upload] = []
        reader = await request.multipart()
        async for part in reader:
            data = await part.read()  # type: ignore[union-attr]
            if part.name == "payload_json":
                body = json.loads(data)
            else:
                files.append(Upload(part.filename or "", bytes(data),
                                    part.headers.get("Content-Type", "application/octet-stream")))
        return body, files

    # ------------------------------------------------------------------ REST: identity, commands

    async def _me(self, request: web.Request) -> web.Response:
        return json_response(self.bot_user)

    async def _application(self, request: web.Request) -> web.Response:
        return json_response({
            "id": str(self.app_id), "name": "search-all", "icon": None, "description": "", "bot_public": True,
            "bot_require_code_grant": False, "owner": self.user(self.snowflake(), "owner"), "verify_key": "00",
            "flags": 0, "team": None, "summary": "", "rpc_origins": [],
        })

    async def _gateway_url(self, request: web.Request) -> web.Response:
        return json_response({"url": self.gateway_url})

    async def _put_commands(self, request: web.Request) -> web.Response:
        body = request[CALL].body or []
        scope = request.match_info.get("guild", "global")
        synced = [{"description": "", **c, "id": str(self.snowflake()), "application_id": str(self.app_id),
                   "version": "1", "default_member_permissions": None, "dm_permission": True, "nsfw": False}
                  for c in body]
        self.commands[scope] = synced
        return json_response(synced)

    # ------------------------------------------------------------------ REST: interactions

    def _check_message(self, body: Json, files: list[Upload], upload_limit: int) -> None:
        """Discord's limits on a message; raises the error Discord answers with."""
        invalid = DiscordError(400, 50035, "Invalid Form Body")
        embeds = body.get("embeds") or []
        if len(embeds) > 10 or len(files) > 10 or len(body.get("content") or "") > 2000:
            raise invalid
        for embed in embeds:
            if len(embed.get("title") or "") > 256 or len(embed.get("description") or "") > 4096:
                raise invalid
        rows = body.get("components") or []
        custom_ids = [c.get("custom_id") for row in rows for c in row.get("components", []) if c.get("custom_id")]
        if len(rows) > 5 or any(len(r.get("components", [])) > 5 for r in rows) or \
                any(len(i) > 100 for i in custom_ids) or len(set(custom_ids)) != len(custom_ids):
            raise invalid
        if sum(len(f.data) for f in files) > upload_limit:
            raise DiscordError(413, 40005, "Request entity too large")
        if not (body.get("content") or embeds or files or body.get("attachments")):
            raise DiscordError(400, 50006, "Cannot send an empty message")

    def _live(self, token: str) -> Interaction:
        interaction = self._by_token.get(token)
        if interaction is None:
            raise DiscordError(404, 10015, "Unknown Webhook")
        if self.now() - interaction.created > TOKEN_SECONDS:
            raise DiscordError(401, 50027, "Invalid Webhook Token")
        return interaction

    def _upload_limit(self, interaction: Interaction) -> int:
        return int(interaction.payload["attachment_size_limit"])

    def _post(self, channel_id: int, body: Json, files: list[Upload], *, ephemeral: bool,
              interaction: Interaction | None = None, reference: int | None = None) -> Posted:
        posted = Posted(self.snowflake(), channel_id, body, files, ephemeral,
                        interaction_id=interaction.id if interaction else None, reference=reference)
        posted.attachments = self._serve_files(posted, files)
        self.messages[posted.id] = posted
        if interaction is not None:
            interaction.messages.append(posted)
        return posted

    async def _callback(self, request: web.Request) -> web.Response:
        call: Call = request[CALL]
        interaction = self.interactions.get(int(request.match_info["id"]))
        if interaction is None or interaction.token != request.match_info["token"] \
                or self.now() - interaction.created > ACK_SECONDS:
            raise DiscordError(404, 10062, "Unknown interaction")
        if interaction.ack_type is not None:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        body = call.body or {}
        response_type = int(body["type"])
        data = body.get("data") or {}
        ephemeral = bool(int(data.get("flags") or 0) & EPHEMERAL)
        channel_id = int(interaction.payload["channel_id"])
        resource: Json = {"type": response_type}
        if response_type == 4:
            self._check_message(data, call.files, self._upload_limit(interaction))
            interaction.original = self._post(channel_id, data, call.files, ephemeral=ephemeral,
                                              interaction=interaction)
            resource["message"] = self.message_payload(interaction.original)
        elif response_type == 5:
            interaction.original = self._post(channel_id, {"content": ""}, [], ephemeral=ephemeral,
                                              interaction=interaction)
            interaction.original.loading = True
        elif response_type == 6:
            if interaction.type != 3:
                raise DiscordError(400, 50035, "Invalid Form Body")
        else:
            raise DiscordError(400, 50035, f"response type {response_type} is not supported by the fake")
        interaction.ack_type, interaction.ack_at, interaction.ack_ephemeral = response_type, call.at, ephemeral
        answer = {"interaction": {"id": str(interaction.id), "type": interaction.type,
                                  "response_message_loading": response_type == 5,
                                  "response_message_ephemeral": ephemeral}, "resource": resource}
        if interaction.original is not None:
            answer["interaction"]["response_message_id"] = str(interaction.original.id)
        return json_response(answer)

    async def _followup(self, request: web.Request) -> web.Response:
        call: Call = request[CALL]
        interaction = self._live(request.match_info["token"])
        if interaction.ack_type is None:
            raise DiscordError(404, 10015, "Unknown Webhook")
        body = call.body or {}
        self._check_message(body, call.files, self._upload_limit(interaction))
        original = interaction.original
        if original is not None and original.loading and not original.deleted:
            # The first followup after a defer replaces the "thinking" message, keeping its flags.
            original.body, original.files, original.loading = body, call.files, False
            original.attachments = self._serve_files(original, call.files)
            interaction.messages.remove(original)
            interaction.messages.append(original)
            return json_response(self.message_payload(original))
        ephemeral = bool(int(body.get("flags") or 0) & EPHEMERAL)
        posted = self._post(int(interaction.payload["channel_id"]), body, call.files, ephemeral=ephemeral,
                            interaction=interaction)
        return json_response(self.message_payload(posted))

    def _webhook_target(self, request: web.Request) -> tuple[Interaction, Posted]:
        interaction = self._live(request.match_info["token"])
        which = request.match_info["message"]
        if which == "@original":
            if interaction.ack_type == 6:
                target = self.messages.get(int(interaction.payload["message"]["id"]))
            else:
                target = interaction.original
        else:
            target = self.messages.get(int(which))
        if target is None or target.deleted:
            raise DiscordError(404, 10008, "Unknown Message")
        return interaction, target

    async def _edit_webhook_message(self, request: web.Request) -> web.Response:
        call: Call = request[CALL]
        interaction, target = self._webhook_target(request)
        body = call.body or {}
        kept = target.attachments
        if "attachments" in body:  # the attachments to keep, by id; new files are added
            kept_ids = {str(a.get("id")) for a in body["attachments"]}
            kept = [a for a in target.attachments if a["id"] in kept_ids]
        merged = {**target.body, **body}
        self._check_message({**merged, "attachments": kept}, call.files, self._upload_limit(interaction))
        target.body, target.files, target.loading = merged, call.files, False
        target.attachments = kept + self._serve_files(target, call.files)
        target.edits += 1
        if target not in interaction.messages:
            interaction.messages.append(target)
        return json_response(self.message_payload(target))

    async def _delete_webhook_message(self, request: web.Request) -> web.Response:
        _, target = self._webhook_target(request)
        target.deleted = True
        return web.Response(status=204)

    # ------------------------------------------------------------------ REST: channels, CDN

    async def _channel_message(self, request: web.Request) -> web.Response:
        call: Call = request[CALL]
        body = call.body or {}
        self._check_message(body, call.files, DEFAULT_UPLOAD_LIMIT)
        reference = body.get("message_reference") or {}
        ref_id = int(reference["message_id"]) if reference.get("message_id") else None
        posted = self._post(int(request.match_info["channel"]), body, call.files, ephemeral=False, reference=ref_id)
        return json_response(self.message_payload(posted))

    async def _typing(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def _channel_history(self, request: web.Request) -> web.Response:
        """A channel's messages, newest first: `before` a message id, at most `limit` (1-100)."""
        messages = self.history.get(int(request.match_info["channel"]), [])
        before = int(request.query.get("before", 1 << 63))
        limit = int(request.query.get("limit", 50))
        if not 1 <= limit <= 100:
            raise DiscordError(400, 50035, "Invalid Form Body")
        older = [m for m in reversed(messages) if int(m["id"]) < before]
        return json_response(older[:limit])

    async def _cdn_get(self, request: web.Request) -> web.Response:
        entry = self._cdn.get(int(request.match_info["id"]))
        if entry is None or entry[0] != request.match_info["filename"]:
            return web.Response(status=404, text="not found")
        _, data, content_type = entry
        return web.Response(body=data, headers={"Content-Type": content_type})
