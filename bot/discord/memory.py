"""Channel memory on Discord: `/memory on|off|status|forget|forget-mine`, live indexing,
forgetting, backfill from channel history, and who may see what (docs/memory.md).

- Commands (a `GroupCog`, servers only): `on [backfill:N]`, `off` and `forget` (this channel)
  need Manage Channels in the channel; `forget scope:server` needs Manage Server; `status` and
  `forget-mine` anyone. Permissions are computed by discord.py from the cached server (roles and
  the channel's overwrites). Answers are ephemeral.
- Indexing: every image attached to a message in a channel that is on (`on_message`; needs the
  Message Content intent, requested when `[memory] enabled`), downloaded from Discord's CDN only
  and handed to `ChannelMemory.index` in a task of its own (the gateway is never held up).
- Forgetting: a deleted message (`on_raw_message_delete`, bulk too), an edit that removed
  attachments (`on_raw_message_edit`), a deleted channel, the bot removed from a server.
- Backfill: `on backfill:N` reads up to N past messages through the history API, 100 a page
  (discord.py waits out 429s), saving its cursor after each page: a restart resumes it
  (`on_ready`), and `status` shows the progress.
- Access (`MemoryAccess`): the channels with memory in which the member has View Channel and
  Read Message History, computed at query time and cached `[memory] access_cache_seconds`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Literal

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.common.downloads import fetch_files
from bot.common.handle import check_file, user_message
from core.config import Settings
from core.errors import BadInputError, SearchAllError
from core.media.kinds import media_kind
from core.memory.memory import ChannelMemory
from core.memory.model import (
    COLLECTION,
    BackfillProgress,
    ChannelStatus,
    PostedImage,
    SearchScope,
    Tenant,
)

log = logging.getLogger(__name__)

HISTORY_PAGE = 100  # Discord's most messages per history request
NEEDS_MANAGE_CHANNELS = "turning memory on or off, or forgetting a channel, needs the Manage Channels permission here"
NEEDS_MANAGE_SERVER = "forgetting the whole server's memory needs the Manage Server permission"
Where = Literal["this channel", "server"]


class _Refused(app_commands.CheckFailure):
    def __init__(self, reason: SearchAllError):
        super().__init__(str(reason))
        self.reason = reason


def tenant_of(guild_id: int) -> Tenant:
    return Tenant("discord", str(guild_id))


def can_read(channel: discord.abc.GuildChannel | discord.Thread, member: discord.Member) -> bool:
    perms = channel.permissions_for(member)
    return perms.view_channel and perms.read_message_history


class MemoryAccess:
    """Which channels with memory a member may read now (cached a short while per member)."""

    def __init__(self, memory: ChannelMemory, ttl_s: float) -> None:
        self.memory = memory
        self.ttl_s = ttl_s
        self._cache: dict[tuple[int, int], tuple[float, frozenset[str]]] = {}

    def readable(self, guild: discord.Guild, member: discord.Member | discord.User) -> frozenset[str]:
        key = (guild.id, member.id)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        allowed: set[str] = set()
        if isinstance(member, discord.Member):
            for channel_id in self.memory.channels_with_memory(tenant_of(guild.id)):
                channel = guild.get_channel_or_thread(int(channel_id))
                if channel is not None and can_read(channel, member):
                    allowed.add(channel_id)
        result = frozenset(allowed)
        if len(self._cache) > 10_000:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[key] = (now + self.ttl_s, result)
        return result

    def clear(self, guild_id: int | None) -> None:
        """Forget the cached answers of a server (its channels with memory changed)."""
        self._cache = {k: v for k, v in self._cache.items() if k[0] != guild_id}

    def scope(self, guild: discord.Guild | None, member: discord.Member | discord.User, *,
              source: str | None, where: Where | None, channel_id: int | None, default: str) -> SearchScope:
        """What a search by `member` may see: in a DM only the shared collection; in a server
        with memory, its channels the member can read (or only this one)."""
        if guild is None:
            if source == "memory":
                raise BadInputError("channel memory is searched in a server, not in DMs: DMs search the shared collection")
            return COLLECTION
        tenant = tenant_of(guild.id)
        if not self.memory.channels_with_memory(tenant):
            if source == "memory":
                raise BadInputError("this server has no channel memory: a moderator can turn it on with /memory on")
            return COLLECTION
        channels = self.readable(guild, member)
        if where == "this channel":
            channels = channels & {str(channel_id)}
        return SearchScope(source or default, tenant, channels)  # type: ignore[arg-type]


def describe(status: ChannelStatus) -> str:
    """`/memory status` as words."""
    since = f" since <t:{int(status.since)}:f>" if status.since else ""
    state = f"Memory is **{'on' if status.on else 'off'}** in this channel{since if status.on else ''}."
    lines = [state, f"{status.images} image{'s' if status.images != 1 else ''} remembered here"
             + (f", the oldest posted <t:{int(status.oldest)}:D>." if status.oldest else ".")]
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


def images_of(message: discord.Message, settings: Settings) -> list[discord.Attachment]:
    """The attachments of `message` that are images (by type and name) within the size limit."""
    found = []
    for attachment in message.attachments:
        if media_kind(attachment.filename, attachment.content_type) != "image":
            continue
        if attachment.size > settings.limits.max_file_bytes:
            continue
        found.append(attachment)
    return found


@app_commands.guild_only()
class MemoryCog(commands.GroupCog, group_name="memory", group_description="Channel memory: search the images posted here"):
    """`/memory …`, the listeners that index and forget, and the backfills."""

    def __init__(self, bot: commands.Bot, settings: Settings, memory: ChannelMemory, session: aiohttp.ClientSession,
                 access: MemoryAccess, admit: Callable[[discord.Interaction], None]) -> None:
        """`admit`: the search cog's door (shutdown, allow-lists, rate limit), for these commands too."""
        super().__init__()
        self.admit = admit
        self.bot = bot
        self.settings = settings
        self.memory = memory
        self.session = session
        self.access = access
        self.tasks: set[asyncio.Task] = set()
        self.backfills: dict[tuple[Tenant, str], asyncio.Task] = {}

    async def cog_unload(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def spawn(self, coro, name: str) -> asyncio.Task:  # type: ignore[no-untyped-def]
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait for the indexing and forgetting already started (tests, shutdown)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        try:
            self.admit(interaction)
        except SearchAllError as exc:
            raise _Refused(exc) from exc
        return True

    async def cog_app_command_error(self, interaction: discord.Interaction,
                                    error: app_commands.AppCommandError) -> None:
        original = error.reason if isinstance(error, _Refused) else getattr(error, "original", error)
        text = user_message(original)
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)

    # ------------------------------------------------------------------ permissions

    @staticmethod
    def _member_permissions(interaction: discord.Interaction) -> discord.Permissions:
        guild, member = interaction.guild, interaction.user
        channel = guild.get_channel_or_thread(interaction.channel_id or 0) if guild else None
        if channel is not None and isinstance(member, discord.Member):
            return channel.permissions_for(member)
        return interaction.permissions

    def _require(self, interaction: discord.Interaction, *, server: bool = False) -> Tenant:
        if interaction.guild_id is None:
            raise BadInputError("channel memory works in servers only")
        perms = self._member_permissions(interaction)
        if server and not perms.manage_guild:
            raise BadInputError(NEEDS_MANAGE_SERVER)
        if not server and not perms.manage_channels:
            raise BadInputError(NEEDS_MANAGE_CHANNELS)
        return tenant_of(interaction.guild_id)

    async def _reply(self, interaction: discord.Interaction, text: str) -> None:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True,
                                                    allowed_mentions=discord.AllowedMentions.none())

    # ------------------------------------------------------------------ commands

    @app_commands.command(name="on", description="Remember the images posted in this channel from now on")
    @app_commands.describe(backfill="also remember the images of up to this many past messages")
    async def turn_on(self, interaction: discord.Interaction,
                      backfill: app_commands.Range[int, 0, 100_000] = 0) -> None:
        tenant = self._require(interaction)
        channel = str(interaction.channel_id)
        await interaction.response.defer(ephemeral=True, thinking=True)
        status = await self.memory.enable(tenant, channel, by=str(interaction.user.id), backfill=backfill)
        self.access.clear(interaction.guild_id)
        if status.backfill is not None and not status.backfill.finished and backfill:
            self.start_backfill(tenant, channel, status.backfill)
        extra = ""
        if status.backfill is not None and backfill > status.backfill.wanted:
            extra = f" (at most {status.backfill.wanted} past messages on this bot)"
        await self._reply(interaction, "Memory is on: images posted here from now on can be found with /search "
                          f"by members who can read this channel.{extra}\n" + describe(status))

    @app_commands.command(name="off", description="Stop remembering images posted in this channel")
    async def turn_off(self, interaction: discord.Interaction) -> None:
        tenant = self._require(interaction)
        status = await self.memory.disable(tenant, str(interaction.channel_id))
        task = self.backfills.pop((tenant, str(interaction.channel_id)), None)
        if task is not None:
            task.cancel()
        await self._reply(interaction, "Memory is off here: nothing new is remembered. What was remembered stays "
                          "searchable until `/memory forget`.\n" + describe(status))

    @app_commands.command(name="status", description="Is memory on here, and how much does it remember?")
    async def status(self, interaction: discord.Interaction) -> None:
        if interaction.guild_id is None:
            raise BadInputError("channel memory works in servers only")
        status = await self.memory.status(tenant_of(interaction.guild_id), str(interaction.channel_id))
        await self._reply(interaction, describe(status))

    @app_commands.command(name="forget", description="Erase what memory holds for this channel, or the whole server")
    @app_commands.describe(scope="this channel (Manage Channels) or the whole server (Manage Server)")
    async def forget(self, interaction: discord.Interaction,
                     scope: Literal["this channel", "server"] = "this channel") -> None:
        tenant = self._require(interaction, server=scope == "server")
        await interaction.response.defer(ephemeral=True, thinking=True)
        if scope == "server":
            for key in [k for k in self.backfills if k[0] == tenant]:
                self.backfills.pop(key).cancel()
            removed = await self.memory.forget_tenant(tenant)
            text = f"Forgotten: {removed} images of this server; memory is off in every channel."
        else:
            task = self.backfills.pop((tenant, str(interaction.channel_id)), None)
            if task is not None:
                task.cancel()
            removed = await self.memory.forget_channel(tenant, str(interaction.channel_id))
            text = f"Forgotten: {removed} images of this channel; memory is off here."
        self.access.clear(interaction.guild_id)
        await self._reply(interaction, text)

    @app_commands.command(name="forget-mine", description="Erase every image you posted from this server's memory")
    async def forget_mine(self, interaction: discord.Interaction) -> None:
        if interaction.guild_id is None:
            raise BadInputError("channel memory works in servers only")
        await interaction.response.defer(ephemeral=True, thinking=True)
        removed = await self.memory.forget_author(tenant_of(interaction.guild_id), str(interaction.user.id))
        await self._reply(interaction, f"Forgotten: the {removed} images you posted in this server.")

    # ------------------------------------------------------------------ indexing

    def posted_images(self, message: discord.Message, attachments: Sequence[discord.Attachment],
                      data: Sequence[bytes]) -> list[PostedImage]:
        assert message.guild is not None
        return [
            PostedImage(
                tenant=tenant_of(message.guild.id), channel=str(message.channel.id), message=str(message.id),
                item=str(attachment.id), author=str(message.author.id), posted_at=message.created_at.timestamp(),
                link=message.jump_url, data=blob, text=message.content or "",
            )
            for attachment, blob in zip(attachments, data, strict=True)
        ]

    async def download(self, attachments: Sequence[discord.Attachment]) -> list[tuple[discord.Attachment, bytes]]:
        """The images' bytes from Discord's CDN (only its hosts, capped); failures are skipped."""
        out = []
        for attachment in attachments:
            try:
                pending = check_file(attachment.filename, attachment.content_type, attachment.size, attachment.url,
                                     self.settings.limits, expect="image")
                [got] = await fetch_files(self.session, [pending], allowed_hosts=self.settings.discord.attachment_hosts,
                                          max_bytes=self.settings.limits.max_file_bytes)
                out.append((attachment, got.data))
            except (TimeoutError, SearchAllError, aiohttp.ClientError) as exc:
                log.info("not remembering attachment %s: %s", attachment.id, exc)
        return out

    async def remember(self, messages: Sequence[discord.Message]) -> int:
        """Index the images of `messages` (all of one channel); the number remembered."""
        images: list[PostedImage] = []
        for message in messages:
            if message.guild is None or message.author.bot:
                continue
            wanted = images_of(message, self.settings)
            if not wanted:
                continue
            got = await self.download(wanted)
            images += self.posted_images(message, [a for a, _ in got], [d for _, d in got])
        if not images:
            return 0
        report = await self.memory.index(images)
        return report.indexed

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.guild is None or message.author.bot or not message.attachments:
            return
        if not self.memory.is_on(tenant_of(message.guild.id), str(message.channel.id)):
            return
        self.spawn(self._remember_logged([message]), name=f"remember {message.id}")

    async def _remember_logged(self, messages: Sequence[discord.Message]) -> None:
        try:
            await self.remember(messages)
        except Exception:
            log.exception("remembering the images of message %s failed", messages[0].id)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        if payload.guild_id is not None:
            self.spawn(self._forget(tenant_of(payload.guild_id), [payload.message_id]), name="forget message")

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        if payload.guild_id is not None:
            self.spawn(self._forget(tenant_of(payload.guild_id), sorted(payload.message_ids)), name="forget messages")

    async def _forget(self, tenant: Tenant, message_ids: Sequence[int], keep: set[str] | None = None) -> None:
        try:
            for message_id in message_ids:
                await self.memory.forget_message(tenant, str(message_id), keep_items=keep)
        except Exception:
            log.exception("forgetting messages %s failed", list(message_ids))

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        """An edit that removed attachments: forget those (the others stay)."""
        if payload.guild_id is None or "attachments" not in payload.data:
            return
        keep = {str(a["id"]) for a in payload.data.get("attachments") or []}
        self.spawn(self._forget(tenant_of(payload.guild_id), [payload.message_id], keep), name="forget removed files")

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        self.spawn(self.memory.forget_channel(tenant_of(channel.guild.id), str(channel.id)), name="forget channel")
        self.access.clear(channel.guild.id)

    @commands.Cog.listener()
    async def on_guild_remove(self, guild: discord.Guild) -> None:
        """The bot was removed from the server (or the server deleted): forget all of it."""
        tenant = tenant_of(guild.id)
        for key in [k for k in self.backfills if k[0] == tenant]:
            self.backfills.pop(key).cancel()
        self.spawn(self.memory.forget_tenant(tenant), name="forget server")
        self.access.clear(guild.id)

    # ------------------------------------------------------------------ backfill

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        """Resume the backfills a restart interrupted."""
        for tenant, channel, progress in self.memory.unfinished_backfills():
            if tenant.platform == "discord" and (tenant, channel) not in self.backfills and not progress.error:
                self.start_backfill(tenant, channel, progress)

    def start_backfill(self, tenant: Tenant, channel: str, progress: BackfillProgress) -> asyncio.Task:
        old = self.backfills.pop((tenant, channel), None)
        if old is not None:
            old.cancel()
        task = self.spawn(self.backfill(tenant, channel, progress), name=f"backfill {channel}")
        self.backfills[(tenant, channel)] = task
        task.add_done_callback(lambda t: self.backfills.pop((tenant, channel), None)
                               if self.backfills.get((tenant, channel)) is t else None)
        return task

    async def backfill(self, tenant: Tenant, channel_id: str, progress: BackfillProgress) -> BackfillProgress:
        """Read past messages page by page from `progress.cursor` backwards, indexing their
        images and saving the cursor after each page; stops at `wanted` or the first message."""
        channel = self.bot.get_channel(int(channel_id))
        if not isinstance(channel, discord.abc.Messageable):
            progress = dataclasses.replace(progress, error="the channel is gone or not a text channel")
            await self.memory.save_backfill(tenant, channel_id, progress)
            return progress
        try:
            while not progress.finished:
                want = min(HISTORY_PAGE, progress.wanted - progress.read)
                before = discord.Object(int(progress.cursor)) if progress.cursor else None
                page = [m async for m in channel.history(limit=want, before=before)]  # type: ignore[union-attr]
                indexed = await self.remember(page) if page else 0
                progress = dataclasses.replace(
                    progress, read=progress.read + len(page), indexed=progress.indexed + indexed,
                    cursor=str(page[-1].id) if page else progress.cursor,
                    finished=not page or len(page) < want or progress.read + len(page) >= progress.wanted,
                )
                await self.memory.save_backfill(tenant, channel_id, progress)
        except asyncio.CancelledError:
            raise
        except discord.HTTPException as exc:
            progress = dataclasses.replace(progress, error=f"Discord refused the history ({exc.status}): "
                                           "check that the bot may Read Message History here")
            await self.memory.save_backfill(tenant, channel_id, progress)
            log.warning("backfill of channel %s stopped: %s", channel_id, exc)
        return progress
