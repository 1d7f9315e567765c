"""Channel memory on Slack (docs/memory.md): `/search-memory`, live indexing, forgetting,
backfill, and the scope of each `/search`.

- `/search-memory on [N] | off | status | forget [workspace] | forget-mine | help`, answered
  only to the person who typed it (the command's `response_url`). `on`, `off` and `forget`
  need a workspace owner or admin, or the channel's creator (bot.slack.access says why);
  `forget workspace` an owner or admin; `status` and `forget-mine` anyone. Not in DMs or group
  DMs: memory is for channels (public or private) the bot is in.
- Indexing: a `message` event with files (`file_share`) in a channel where memory is on: each
  image file downloaded with the workspace's bot token from Slack's file hosts only, its
  message's permalink read (`chat.getPermalink`), and handed to `ChannelMemory.index`. The
  bot's own messages (its uploaded results) are never indexed.
- Forgetting: `message_deleted`; `message_changed` that dropped files (tombstones count as
  dropped); `file_deleted` (every message that shared the file); `channel_deleted` and
  `group_deleted`; `app_uninstalled` and a `tokens_revoked` that revokes the bot token: the
  whole workspace. `member_left_channel` and `member_joined_channel` drop the person's cached
  memberships.
- Backfill: `on N` reads up to N past messages (bot.slack.backfill), resumed after a restart.
- Searching: `source:memory|collection|both` and `in:channel|workspace` in the query text;
  the scope is what bot.slack.access allows the asker in the channel asked from. DMs search
  the shared collection only.

Every call to Slack uses the client Bolt gives the request (that workspace's bot token); a
backfill resumed at start-up gets its workspace's token from the installation store (OAuth) or
uses the app's one token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol

import aiohttp
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.common.downloads import download
from bot.common.handle import user_message
from bot.common.reply import Action, MoreLikeRemembered, run_action
from bot.slack.access import SlackAccess
from bot.slack.backfill import read_history
from bot.slack.files import SlackFile
from bot.slack.text import split_choice, unescape
from core.config import Settings, SlackSettings
from core.errors import BadInputError, SearchAllError
from core.memory.memory import MEMORY_OFF, ChannelMemory, MemoryUnavailableError
from core.memory.model import (
    COLLECTION,
    SOURCES,
    BackfillProgress,
    ChannelStatus,
    PostedImage,
    SearchScope,
    Tenant,
)
from core.service import SearchResult, SearchService

log = logging.getLogger("search_all.slack.memory")

COMMAND = "/search-memory"
WHERE = ("channel", "workspace")
INDEXED_SUBTYPES = (None, "file_share", "thread_broadcast")
DOWNLOADS_AT_ONCE = 4
USAGE = (
    "*Channel memory*: the images posted in this channel, found with `/search`.\n"
    "• `/search-memory on` remembers the images posted here from now on; `on 500` also those of "
    "the last 500 messages\n"
    "• `/search-memory off` stops remembering (what is remembered stays searchable)\n"
    "• `/search-memory status`: how many images are remembered here, since when\n"
    "• `/search-memory forget` erases this channel's memory; `forget workspace` the whole workspace's\n"
    "• `/search-memory forget-mine` erases the images you posted, in every channel\n"
    "On, off and forget: workspace owners and admins, and the channel's creator.\n"
    "Search with `/search words source:memory` (or `collection`, `both`) and `in:channel` "
    "(or `workspace`): you find the images of the channels you are in; a private channel's "
    "only in that channel."
)
NEEDS_MANAGER = ("turning memory on or off, or forgetting a channel, is for workspace owners and admins "
                 "and the channel's creator")
NEEDS_ADMIN = "forgetting the whole workspace's memory is for workspace owners and admins"
NOT_IN_DMS = "channel memory works in channels (public or private), not in direct messages"
# What the OAuth install asks for on top of `[slack] scopes` when `[memory] enabled` (the manifest
# lists why each is needed).
MEMORY_SCOPES = ("channels:history", "groups:history", "channels:read", "groups:read", "users:read", "files:read")
NOT_A_MEMBER = ("I am not in this channel, so I cannot see what is posted here: invite me "
                "(`/invite @Search All`), then turn memory on")

Tell = Callable[[str], Awaitable[Any]]
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class Asker(Protocol):
    """Who searches and where (bot.slack.app.Conversation)."""

    channel: str
    user: str
    team: str
    client: AsyncWebClient


class Host(Protocol):
    """What the memory needs of the Slack bot (bot.slack.app.SlackBot)."""

    settings: Settings
    client: AsyncWebClient

    @property
    def ready(self) -> bool: ...

    @property
    def service(self) -> SearchService: ...


def with_memory_scopes(settings: Settings) -> SlackSettings:
    """`[slack]` with the scopes channel memory needs added to those a workspace's install asks
    for, when `[memory] enabled` (and nothing added when it is off)."""
    if not settings.memory.enabled:
        return settings.slack
    missing = [scope for scope in MEMORY_SCOPES if scope not in settings.slack.scopes]
    return settings.slack.model_copy(update={"scopes": [*settings.slack.scopes, *missing]})


def tenant_of(team: str) -> Tenant:
    try:
        return Tenant("slack", team)
    except ValueError:
        raise BadInputError(f"{team!r} is not a Slack workspace id") from None


def is_dm(channel: str) -> bool:
    """A direct message with the bot (Slack's ids of DMs start with D)."""
    return channel.startswith("D")


def slack_date(epoch: float, fmt: str = "{date_short_pretty} at {time}") -> str:
    """A time Slack shows in the reader's own time zone (UTC in the fallback text)."""
    fallback = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch))
    return f"<!date^{int(epoch)}^{fmt}|{fallback}>"


def describe(status: ChannelStatus) -> str:
    """`/search-memory status` as words."""
    if status.on:
        state = "Memory is *on* in this channel" + (f" since {slack_date(status.since)}" if status.since else "")
        state += f" (turned on by <@{status.by}>)." if status.by else "."
    else:
        state = "Memory is *off* in this channel."
    count = f"{status.images} image{'s' if status.images != 1 else ''} remembered here"
    if status.oldest:
        count += f", the oldest posted {slack_date(status.oldest, '{date_short_pretty}')}"
    lines = [state, count + "."]
    fill = status.backfill
    if fill is not None and fill.wanted:
        if fill.finished:
            lines.append(f"Backfill done: {fill.read} past messages read, {fill.indexed} images remembered.")
        elif fill.error:
            lines.append(f"Backfill stopped after {fill.read} of {fill.wanted} messages: {fill.error}")
        else:
            lines.append(f"Backfill running: {fill.read} of {fill.wanted} past messages read, "
                         f"{fill.indexed} images remembered so far.")
    return "\n".join(lines)


def read_options(text: str) -> tuple[str, str | None, str | None]:
    """The query text without `source:` and `in:`, and their values (None when not given)."""
    text, source = split_choice(text, "source", SOURCES)
    text, where = split_choice(text, "in", WHERE)
    return text, source, where


def backfill_count(words: Sequence[str]) -> int:
    if not words:
        return 0
    word = words[0]
    if len(words) > 1 or not (word.isascii() and word.isdigit()) or len(word) > 9:
        raise BadInputError("write the number of past messages to read like `/search-memory on 500`")
    return int(word)


class SlackMemory:
    """The Slack side of channel memory: its command and event listeners, its backfills, and the
    scope of searches. Constructed by `SlackBot`, which passes its task spawner."""

    def __init__(self, host: Host, session: aiohttp.ClientSession, *, spawn: Spawn) -> None:
        self.host = host
        self.session = session
        self.spawn = spawn
        self.access = SlackAccess(host.settings.memory.access_cache_seconds)
        self.backfills: dict[tuple[Tenant, str], asyncio.Task[Any]] = {}
        self._app: AsyncApp | None = None

    # ------------------------------------------------------------------ wiring

    def register(self, app: AsyncApp, *, oauth: bool) -> None:
        """The command and the event listeners. Call before the bot's own `message` listener:
        Bolt runs the first listener that matches, and this one takes channel messages only."""
        self._app = app
        app.middleware(self._forget_uninstalled)
        app.command(COMMAND)(self.ack_command)
        app.event("message", matchers=[_in_a_channel])(self.on_channel_message)
        app.event("file_deleted")(self.on_file_deleted)
        app.event("channel_deleted")(self.on_channel_deleted)
        app.event("group_deleted")(self.on_channel_deleted)
        app.event("member_left_channel")(self.on_membership_changed)
        app.event("member_joined_channel")(self.on_membership_changed)
        if not oauth:  # with OAuth, Bolt's own listeners delete the installation too
            app.event("app_uninstalled")(_acknowledged)
            app.event("tokens_revoked")(_acknowledged)

    @property
    def memory(self) -> ChannelMemory | None:
        """The channel memory, once the service is open and when `[memory] enabled`."""
        return self.host.service.channel_memory if self.host.ready else None

    def _memory(self) -> ChannelMemory:
        memory = self.host.service.channel_memory  # StartingUpError before the service is open
        if memory is None:
            raise MemoryUnavailableError()
        return memory

    # ------------------------------------------------------------------ searching

    async def scope(self, asker: Asker, source: str | None, where: str | None) -> SearchScope:
        """What a search by `asker` in their channel may see: in a DM the shared collection only;
        in a workspace with memory, the channels bot.slack.access allows (or this one only)."""
        memory = self.host.service.channel_memory
        if memory is None:
            if source in ("memory", "both") or where is not None:
                raise BadInputError(MEMORY_OFF)
            return COLLECTION
        if is_dm(asker.channel):
            if source == "memory" or where is not None:
                raise BadInputError("channel memory is searched in channels, not in direct messages: "
                                    "here you search the shared collection")
            return COLLECTION
        tenant = tenant_of(asker.team)
        known = memory.channels_with_memory(tenant)
        if not known and source is None and where is None:
            return COLLECTION
        if not known and source != "collection":
            raise BadInputError("this workspace has no channel memory: an admin or a channel's creator "
                                "can turn it on with `/search-memory on`")
        candidates = known & {asker.channel} if where == "channel" else known
        channels = await self.access.readable(asker.client, asker.team, asker.user, here=asker.channel,
                                              candidates=candidates)
        return SearchScope(source or self.host.settings.memory.default_source, tenant, channels)  # type: ignore[arg-type]

    async def read_scope(self, asker: Asker, text: str) -> tuple[str, SearchScope]:
        """`text` without its `source:` and `in:` options, and the scope they ask for."""
        text, source, where = read_options(text)
        return text, await self.scope(asker, source, where)

    async def run_button(self, asker: Asker, action: Action, limit: int | None) -> SearchResult:
        """A button pressed: memory pages and "more like" a remembered image limited to what the
        person pressing it may see now, where they press it."""
        if self.host.service.channel_memory is None:
            return await run_action(self.host.service, action, limit)
        source = "memory" if isinstance(action, MoreLikeRemembered) else None
        if is_dm(asker.channel) and source is None:
            scope = COLLECTION
        else:
            scope = await self.scope(asker, source, None)
        return await run_action(self.host.service, action, limit, scope)

    # ------------------------------------------------------------------ the command

    async def ack_command(self, ack: Callable[..., Awaitable[Any]], command: dict[str, Any], respond: Any,
                          client: AsyncWebClient, context: Any) -> None:
        await ack()

        async def tell(text: str) -> None:
            await respond(text=text, response_type="ephemeral", replace_original=False)

        self.spawn(self.answer_command(
            client, command.get("team_id") or context.team_id or "", command["channel_id"], command["user_id"],
            (command.get("text") or "").strip(), tell,
        ))

    async def answer_command(self, client: AsyncWebClient, team: str, channel: str, user: str, text: str,
                             tell: Tell) -> None:
        try:
            await tell(await self._command(client, team, channel, user, text))
        except Exception as exc:  # noqa: BLE001 - told to the user; user_message logs the unexpected
            try:
                await tell(user_message(exc))
            except Exception:
                log.exception("could not answer /search-memory")

    async def _command(self, client: AsyncWebClient, team: str, channel: str, user: str, text: str) -> str:
        words = text.split()
        verb = words[0].lower() if words else "help"
        if verb == "help":
            return USAGE
        memory = self._memory()
        tenant = tenant_of(team)
        if verb == "forget-mine":
            removed = await memory.forget_author(tenant, user)
            return f"Forgotten: the {removed} image{'s' if removed != 1 else ''} you posted in this workspace."
        if is_dm(channel):
            raise BadInputError(NOT_IN_DMS)
        if verb == "status":
            return describe(await memory.status(tenant, channel))
        if verb == "forget" and [w.lower() for w in words[1:]] == ["workspace"]:
            if not await self.access.is_admin(client, user):
                raise BadInputError(NEEDS_ADMIN)
            self._stop_backfills(tenant)
            removed = await memory.forget_tenant(tenant)
            return f"Forgotten: {removed} images of this workspace; memory is off in every channel."
        if verb not in ("on", "off", "forget") or (verb != "on" and len(words) > 1):
            raise BadInputError(f"`{COMMAND} {text[:40]}` is not a memory command.\n{USAGE}")
        info = await self.access.channel(client, channel)
        if not await self.access.may_manage(client, user, info):
            raise BadInputError(NEEDS_MANAGER)
        if verb == "off":
            self._stop_backfill(tenant, channel)
            status = await memory.disable(tenant, channel)
            return ("Memory is off here: nothing new is remembered. What was remembered stays searchable "
                    f"until `{COMMAND} forget`.\n" + describe(status))
        if verb == "forget":
            self._stop_backfill(tenant, channel)
            removed = await memory.forget_channel(tenant, channel)
            return f"Forgotten: {removed} images of this channel; memory is off here."
        wanted = backfill_count(words[1:])
        if info.group_dm:
            raise BadInputError(NOT_IN_DMS)
        if not info.bot_is_member:
            raise BadInputError(NOT_A_MEMBER)
        status = await memory.enable(tenant, channel, by=user, backfill=wanted)
        if wanted and status.backfill is not None and not status.backfill.finished:
            self.start_backfill(client, tenant, channel, status.backfill)
        extra = ""
        if status.backfill is not None and wanted > status.backfill.wanted:
            extra = f" (at most {status.backfill.wanted} past messages on this bot)"
        who = "its members" if info.private else "members of this channel"
        return (f"Memory is on: images posted here from now on can be found with `/search` by {who}.{extra}\n"
                + describe(status))

    # ------------------------------------------------------------------ events

    async def on_channel_message(self, event: dict[str, Any], body: dict[str, Any], context: Any,
                                 client: AsyncWebClient) -> None:
        memory = self.memory
        channel = event.get("channel")
        team = body.get("team_id") or context.team_id
        if memory is None or not isinstance(channel, str) or not team:
            return
        tenant = tenant_of(team)
        subtype = event.get("subtype")
        if subtype == "message_deleted" and event.get("deleted_ts"):
            if channel in memory.channels_with_memory(tenant):
                self.spawn(self._forget(memory.forget_message(tenant, str(event["deleted_ts"])), "deleted message"))
        elif subtype == "message_changed":
            new, old = event.get("message") or {}, event.get("previous_message") or {}
            if old.get("files") and new.get("ts") and channel in memory.channels_with_memory(tenant):
                kept = {str(f.get("id")) for f in new.get("files") or [] if f.get("mode") != "tombstone"}
                self.spawn(self._forget(memory.forget_message(tenant, str(new["ts"]), keep_items=kept),
                                        "files removed from a message"))
        elif (subtype in INDEXED_SUBTYPES and event.get("files") and memory.is_on(tenant, channel)
              and not _own(event, context.bot_id, context.bot_user_id)):
            self.spawn(self._remember_live(client, tenant, channel, event))

    async def on_file_deleted(self, event: dict[str, Any], body: dict[str, Any], context: Any) -> None:
        memory, file_id = self.memory, event.get("file_id")
        team = body.get("team_id") or context.team_id
        if memory is None or not isinstance(file_id, str) or not team:
            return
        store = self.host.service.memory
        if store is not None:
            tenant = tenant_of(team)
            self.spawn(self._forget(asyncio.to_thread(store.delete, tenant, items={file_id}), "deleted file"))

    async def on_channel_deleted(self, event: dict[str, Any], body: dict[str, Any], context: Any) -> None:
        memory, channel = self.memory, event.get("channel")
        team = body.get("team_id") or context.team_id
        if memory is None or not isinstance(channel, str) or not team:
            return
        tenant = tenant_of(team)
        if channel in memory.channels_with_memory(tenant):
            self._stop_backfill(tenant, channel)
            self.spawn(self._forget(memory.forget_channel(tenant, channel), "deleted channel"))

    async def on_membership_changed(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        """Someone left or joined a channel: their cached memberships are read again."""
        team, user = body.get("team_id") or event.get("team"), event.get("user")
        if isinstance(team, str) and isinstance(user, str):
            self.access.forget(team, user)

    async def _forget_uninstalled(self, body: dict[str, Any], next: Callable[[], Awaitable[Any]]) -> Any:
        """The app uninstalled, or its bot token revoked: the workspace's memory is erased.
        (A middleware, so that Bolt's own uninstall listeners still run with OAuth.)"""
        event = body.get("event") if body.get("type") == "event_callback" else None
        if isinstance(event, dict):
            kind = event.get("type")
            revoked_bot = kind == "tokens_revoked" and (event.get("tokens") or {}).get("bot")
            team = body.get("team_id")
            memory = self.memory
            if (kind == "app_uninstalled" or revoked_bot) and isinstance(team, str) and memory is not None:
                tenant = tenant_of(team)
                self._stop_backfills(tenant)
                self.access.forget(team)
                self.spawn(self._forget(memory.forget_tenant(tenant), "workspace uninstalled"))
        return await next()

    @staticmethod
    async def _forget(work: Awaitable[int], why: str) -> None:
        try:
            removed = await work
        except Exception:
            log.exception("could not forget the images of a %s", why)
            return
        if removed:
            log.info("forgot %d images (%s)", removed, why)

    # ------------------------------------------------------------------ indexing

    async def _remember_live(self, client: AsyncWebClient, tenant: Tenant, channel: str,
                             message: Mapping[str, Any]) -> None:
        try:
            await self.remember(client, tenant, channel, [message])
        except Exception:
            log.exception("could not remember the images of message %s in %s", message.get("ts"), channel)

    async def remember(self, client: AsyncWebClient, tenant: Tenant, channel: str,
                       messages: Sequence[Mapping[str, Any]], *, skip_bot: tuple[str, str] | None = None) -> int:
        """Index the image files of `messages` (of `channel`); the number of images remembered.
        `skip_bot`: (bot id, bot user id) whose messages are left out (a backfill's)."""
        memory = self._memory()
        gate = asyncio.Semaphore(DOWNLOADS_AT_ONCE)
        wanted = [m for m in messages if m.get("files") and m.get("ts") and m.get("subtype") in INDEXED_SUBTYPES
                  and not (skip_bot and _own(m, *skip_bot))]
        found = await asyncio.gather(*(self._images_of(client, tenant, channel, m, gate) for m in wanted))
        images = [image for batch in found for image in batch]
        if not images:
            return 0
        report = await memory.index(images)
        return report.indexed

    async def _images_of(self, client: AsyncWebClient, tenant: Tenant, channel: str, message: Mapping[str, Any],
                         gate: asyncio.Semaphore) -> list[PostedImage]:
        limits = self.host.settings.limits
        files = []
        for raw in message.get("files") or []:
            if raw.get("mode") in ("tombstone", "hidden_by_limit") or not raw.get("id"):
                continue
            if raw.get("file_access") == "check_file_info":
                try:
                    raw = (await client.files_info(file=str(raw["id"])))["file"]
                except SlackApiError as exc:
                    log.info("file %s not readable: %s", raw.get("id"), exc.response.get("error"))
                    continue
            file = SlackFile.from_event(raw)
            if file.kind == "image" and file.url and (file.size is None or file.size <= limits.max_file_bytes):
                files.append(file)
        if not files:
            return []
        ts = str(message["ts"])
        link = await self._permalink(client, channel, ts)
        headers = {"Authorization": f"Bearer {client.token or ''}"}

        async def fetch(file: SlackFile) -> bytes | None:
            async with gate:
                try:
                    data, _ = await download(self.session, file.url or "", allowed_hosts=self.host.settings.slack.file_hosts,
                                             max_bytes=limits.max_file_bytes, headers=headers, what=file.name)
                    return data
                except SearchAllError as exc:
                    log.info("not remembering %s: %s", file.name, exc)
                    return None

        blobs = await asyncio.gather(*(fetch(f) for f in files))
        text = unescape(str(message.get("text") or ""))
        author = str(message.get("user") or message.get("bot_id") or "")
        return [
            PostedImage(tenant=tenant, channel=channel, message=ts, item=file.id, author=author,
                        posted_at=float(ts), link=link, data=blob, text=text)
            for file, blob in zip(files, blobs, strict=True)
            if blob is not None
        ]

    @staticmethod
    async def _permalink(client: AsyncWebClient, channel: str, ts: str) -> str:
        try:
            return str((await client.chat_getPermalink(channel=channel, message_ts=ts))["permalink"])
        except SlackApiError as exc:
            log.info("no permalink for %s in %s: %s", ts, channel, exc.response.get("error"))
            return f"https://slack.com/app_redirect?channel={channel}&message_ts={ts}"

    # ------------------------------------------------------------------ backfill

    def start_backfill(self, client: AsyncWebClient, tenant: Tenant, channel: str, progress: BackfillProgress) -> None:
        self._stop_backfill(tenant, channel)
        self.spawn(self._backfill(client, tenant, channel, progress))

    async def _backfill(self, client: AsyncWebClient, tenant: Tenant, channel: str,
                        progress: BackfillProgress) -> None:
        key = (tenant, channel)
        task = asyncio.current_task()
        assert task is not None
        self.backfills[key] = task
        try:
            me = await client.auth_test()
            skip = (str(me.get("bot_id") or ""), str(me.get("user_id") or ""))

            async def index_page(messages: Sequence[Mapping[str, Any]]) -> int:
                return await self.remember(client, tenant, channel, messages, skip_bot=skip)

            done = await read_history(client, self._memory(), tenant, channel, progress, index_page)
            log.info("backfill of %s in %s: %d messages read, %d images remembered%s", channel, tenant.id,
                     done.read, done.indexed, f" ({done.error})" if done.error else "")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("backfill of %s in %s failed", channel, tenant.id)
        finally:
            if self.backfills.get(key) is task:
                del self.backfills[key]

    def _stop_backfill(self, tenant: Tenant, channel: str) -> None:
        task = self.backfills.pop((tenant, channel), None)
        if task is not None:
            task.cancel()

    def _stop_backfills(self, tenant: Tenant) -> None:
        for key in [k for k in self.backfills if k[0] == tenant]:
            self._stop_backfill(*key)

    def resume_backfills(self) -> None:
        """Start again the Slack backfills a restart interrupted (the search service is open)."""
        memory = self.memory
        if memory is None:
            return
        for tenant, channel, progress in memory.unfinished_backfills():
            if tenant.platform == "slack" and not progress.error and (tenant, channel) not in self.backfills:
                self.spawn(self._resume(tenant, channel, progress))

    async def _resume(self, tenant: Tenant, channel: str, progress: BackfillProgress) -> None:
        client = await self.client_for(tenant.id)
        if client is None:
            log.warning("backfill of %s in %s not resumed: the app is not installed there", channel, tenant.id)
            return
        await self._backfill(client, tenant, channel, progress)

    async def client_for(self, team: str) -> AsyncWebClient | None:
        """A client with `team`'s bot token: from the installation store (OAuth), else the app's."""
        app = self._app
        store = app.installation_store if app is not None else None
        if store is None:
            return self.host.client
        bot = await store.async_find_bot(enterprise_id=None, team_id=team)
        if bot is None or not bot.bot_token:
            return None
        base = self.host.client
        return AsyncWebClient(token=bot.bot_token, base_url=base.base_url, session=self.session,
                              retry_handlers=base.retry_handlers, logger=base.logger)


async def _in_a_channel(event: dict[str, Any]) -> bool:
    """A message event of a channel or private channel (DMs go to the bot's own listener)."""
    return event.get("channel_type") in ("channel", "group")


async def _acknowledged() -> None:
    """An event that needs nothing more than its 200 (the work is done by a middleware)."""


def _own(message: Mapping[str, Any], bot_id: str | None, bot_user_id: str | None) -> bool:
    """A message the bot posted itself (its results and their uploads)."""
    return bool((bot_id and message.get("bot_id") == bot_id) or (bot_user_id and message.get("user") == bot_user_id))
