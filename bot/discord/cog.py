"""The Discord flows: /search, the context menus, mentions and DMs, and the buttons.

Every interaction follows Discord's clock: the checks that need no I/O (allow-lists and the
per-user rate limit in `interaction_check`, attachment kinds and declared sizes, the query
syntax) run first and a refusal is an instant ephemeral reply; otherwise the interaction is
deferred at once (Discord wants an answer within 3 s) and the download, search and upload follow
(the token lives 15 min). A failure after the defer deletes the "thinking" message and says why
in an ephemeral followup. Messages (mentions, DMs) get a normal reply, errors included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Sequence
from typing import Any, Literal

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.common.downloads import fetch_files
from bot.common.handle import (
    Admission,
    NotAllowedHereError,
    PageSize,
    PendingFile,
    build_query,
    check_attachment_count,
    check_file,
    on_allow_list,
    user_message,
)
from bot.common.reply import (
    Action,
    MoreLikeRemembered,
    NextPage,
    build_reply,
    run_action,
)
from bot.discord.memory import MemoryAccess, Where
from bot.discord.render import (
    ACTION_EVENT,
    MAX_EMBEDS,
    RenderedReply,
    fit_uploads,
    needs_upload,
    render_reply,
    upload_name,
)
from core.config import Settings
from core.errors import BadInputError, EmptyQueryError, SearchAllError
from core.media.kinds import MediaKind, media_kind
from core.memory.memory import MEMORY_OFF
from core.memory.model import COLLECTION, SearchScope
from core.query import parse_query_text
from core.service import SearchResult, SearchService

log = logging.getLogger(__name__)

IMAGE_MENU = "Search with this image"
AUDIO_MENU = "Search with this audio"
OUT_OF_DATE = "This command does not match the bot: ask its admin to run `search-all bot discord --sync`"
DEFAULT_UPLOAD_LIMIT = discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
NOTHING_TO_SEARCH = "mention me with some words, an image or a voice message to search for"
SHUTTING_DOWN = "the bot is restarting: try again in a minute"


class ShuttingDownError(SearchAllError):
    """A request that arrived after the bot began to shut down (it answers what it took already)."""

    def __init__(self) -> None:
        super().__init__(SHUTTING_DOWN)


class Refused(app_commands.CheckFailure):
    """`interaction_check` turned the request away; `reason` is the error the user is told."""

    def __init__(self, reason: SearchAllError):
        super().__init__(str(reason))
        self.reason = reason


EXPIRED = 10062  # Discord's "Unknown interaction": not acknowledged within its 3 s


async def first_answer(interaction: discord.Interaction, send: Awaitable[Any]) -> bool:
    """Send an interaction's first answer (a defer or a message); False when Discord says it
    expired (the user already saw "The application did not respond"), logged once as a warning
    without a traceback, since nothing can be done for that interaction any more."""
    try:
        await send
    except discord.NotFound as exc:
        if exc.code != EXPIRED:
            raise
        log.warning("interaction %s expired before it was answered (Discord allows 3 s)", interaction.id)
        return False
    return True


async def answer_command_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    """An application command that could not run: refused, failed, or unknown / with options the
    bot cannot read (Discord checks them against the registered commands, so those are out of
    date: run with --sync)."""
    if isinstance(error, Refused):
        text = user_message(error.reason)
    elif isinstance(error, app_commands.CommandInvokeError):
        text = user_message(error.original)
    else:
        text = f"{OUT_OF_DATE} ({error})"
    if interaction.response.is_done():
        log.warning("command failed after its answer began: %s", error)
    else:
        await first_answer(interaction, interaction.response.send_message(text, ephemeral=True))


def with_filter_words(query: str | None, include: str | None, exclude: str | None) -> str | None:
    """The `filter` / `exclude` options written into the query text as filter words."""
    words = [f'{sign}filter:"{w.replace(chr(34), "").strip()}"'
             for sign, w in (("", include), ("-", exclude)) if w and w.replace(chr(34), "").strip()]
    return " ".join([query or "", *words]).strip() or query


def pending(attachment: discord.Attachment, settings: Settings, *, expect: MediaKind | None = None) -> PendingFile:
    return check_file(attachment.filename, attachment.content_type, attachment.size, attachment.url,
                      settings.limits, expect=expect)


def first_of_kind(message: discord.Message, kind: MediaKind) -> discord.Attachment:
    """The first attachment of `kind` in a message (context menus), or a message saying there is none."""
    for attachment in message.attachments:
        if media_kind(attachment.filename, attachment.content_type) == kind:
            return attachment
    what = "image" if kind == "image" else "voice message or audio file"
    raise BadInputError(f"that message has no {what} to search with")


def without_mentions(content: str, user_id: int) -> str:
    """A message's text without the mentions of the bot (`<@id>` and `<@!id>`)."""
    return re.sub(rf"<@!?{user_id}>", " ", content).strip()


class SearchCog(commands.Cog):
    """The commands, the message listener and the buttons, over one `SearchService`."""

    def __init__(self, bot: commands.Bot, settings: Settings, service: SearchService,
                 session: aiohttp.ClientSession):
        self.bot = bot
        self.settings = settings
        self.service = service
        self.session = session
        self.admission = Admission(settings, per_message=MAX_EMBEDS)
        self.closing = False  # set on shutdown: new requests are refused, those admitted finish
        self.in_flight: set[asyncio.Task] = set()  # the tasks answering admitted requests
        # Channel memory (bot/discord/memory.py): who may read which channels, at query time.
        memory = service.channel_memory
        self.access = None if memory is None else MemoryAccess(memory, settings.memory.access_cache_seconds)
        self.menus = [
            app_commands.ContextMenu(name=IMAGE_MENU, callback=self.with_image),
            app_commands.ContextMenu(name=AUDIO_MENU, callback=self.with_audio),
        ]

    async def cog_load(self) -> None:
        for menu in self.menus:
            self.bot.tree.add_command(menu)

    async def cog_unload(self) -> None:
        for menu in self.menus:
            self.bot.tree.remove_command(menu.name, type=menu.type)

    # ------------------------------------------------------------------ the door

    def admit(self, *, user_id: int, guild_id: int | None, channel_id: int | None, parent_id: int | None) -> None:
        """The allow-lists of `[discord]` (a DM is in no listed guild or channel), then the rate limit.
        Every request passes here first, in the task that answers it: that task is counted in flight
        (shutdown waits for it), or, once shutdown began, the request is refused."""
        if self.closing:
            raise ShuttingDownError()
        task = asyncio.current_task()
        if task is not None and task not in self.in_flight:
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        allowed = self.settings.discord
        self.admission.admit(
            f"discord:{user_id}",
            on_allow_list(allowed.allowed_guilds, guild_id),
            on_allow_list(allowed.allowed_channels, channel_id, parent_id),
        )

    def admit_interaction(self, interaction: discord.Interaction) -> None:
        self.admit(
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            parent_id=getattr(interaction.channel, "parent_id", None),
        )

    async def interaction_check(self, interaction: discord.Interaction) -> bool:  # the cog's commands
        try:
            self.admit_interaction(interaction)
        except SearchAllError as exc:
            raise Refused(exc) from exc
        return True

    async def cog_app_command_error(self, interaction: discord.Interaction,
                                    error: app_commands.AppCommandError) -> None:
        await answer_command_error(interaction, error)

    # ------------------------------------------------------------------ commands

    @app_commands.command(name="search", description="Search the images with words, an image or a sound")
    @app_commands.describe(
        query='words; "cat + 0.5*cartoon - photo" weighs terms, filter:word keeps prompts with that word',
        image="an image to find similar images to",
        audio="a voice message or sound to search with",
        limit="how many results (1-10)",
        filter="only images whose prompt contains this word or phrase",
        exclude="leave out images whose prompt contains this word or phrase",
        source="where to look: this server's channel memory, the shared collection, or both",
        where="channel memory of this channel only, or of every channel you can read (the default)",
    )
    @app_commands.rename(where="in")
    async def search_command(
        self,
        interaction: discord.Interaction,
        query: str | None = None,
        image: discord.Attachment | None = None,
        audio: discord.Attachment | None = None,
        limit: app_commands.Range[int, 1, 10] | None = None,
        filter: str | None = None,
        exclude: str | None = None,
        source: Literal["memory", "collection", "both"] | None = None,
        where: Where | None = None,
    ) -> None:
        text = (with_filter_words(query, filter, exclude) or "").strip()
        try:
            scope = self.scope_for(interaction.guild, interaction.user, interaction.channel_id, source, where)
            files = [pending(a, self.settings, expect=kind)
                     for a, kind in ((image, "image"), (audio, "audio")) if a is not None]
            if not text and not files:
                raise EmptyQueryError("the search is empty: type a query, or attach an image or audio clip")
            limits = self.settings.limits
            parse_query_text(text, max_chars=limits.max_query_chars, max_terms=limits.max_terms)
        except Exception as exc:
            return await self.refuse(interaction, exc)
        await self.answer(interaction, text, files, self.admission.page_size(limit), scope)

    def scope_for(self, guild: discord.Guild | None, user: discord.abc.User, channel_id: int | None,
                  source: str | None = None, where: Where | None = None) -> SearchScope:
        """What a search here may see: the shared collection, and in a server with channel
        memory the channels `user` can read now (bot/discord/memory.py)."""
        if self.access is None:
            if source == "memory" or where is not None:
                raise BadInputError(MEMORY_OFF)
            return COLLECTION
        return self.access.scope(guild, user, source=source, where=where, channel_id=channel_id,  # type: ignore[arg-type]
                                 default=self.settings.memory.default_source)

    async def with_image(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await self.context_menu(interaction, message, "image")

    async def with_audio(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await self.context_menu(interaction, message, "audio")

    async def context_menu(self, interaction: discord.Interaction, message: discord.Message,
                           kind: MediaKind) -> None:
        try:
            self.admit_interaction(interaction)
            files = [pending(first_of_kind(message, kind), self.settings)]
            scope = self.scope_for(interaction.guild, interaction.user, interaction.channel_id)
        except Exception as exc:
            return await self.refuse(interaction, exc)
        await self.answer(interaction, "", files, self.admission.page_size(None), scope)

    @commands.Cog.listener(f"on_{ACTION_EVENT}")
    async def on_search_action(self, interaction: discord.Interaction, action: Action) -> None:
        """A button: "More like #N" answers with a new message, "Next page" edits the message."""
        try:
            self.admit_interaction(interaction)
        except Exception as exc:
            return await self.refuse(interaction, exc)
        more = not isinstance(action, NextPage)
        if not await first_answer(interaction, interaction.response.defer(thinking=more)):
            return
        try:
            # Memory pages and "more like" a remembered image: what the presser may read now.
            scope = None
            if self.access is not None and interaction.guild is not None:
                scope = self.scope_for(interaction.guild, interaction.user, interaction.channel_id,
                                       "memory" if isinstance(action, MoreLikeRemembered) else None)
            elif isinstance(action, MoreLikeRemembered) or interaction.guild is None:
                scope = COLLECTION
            result = await run_action(self.service, action, self.admission.limit(None), scope)
            rendered = await self.render(result, interaction.filesize_limit)
            if more:
                await interaction.followup.send(**rendered.send_kwargs(), wait=True)
            else:
                await interaction.edit_original_response(**rendered.edit_kwargs())
        except Exception as exc:
            await self.fail(interaction, exc, thinking=more)

    # ------------------------------------------------------------------ searching and answering

    async def search(self, text: str, files: Sequence[PendingFile], limit: int,
                     scope: SearchScope = COLLECTION) -> SearchResult:
        attachments = await fetch_files(self.session, files, allowed_hosts=self.settings.discord.attachment_hosts,
                                        max_bytes=self.settings.limits.max_file_bytes)
        query = build_query(text, attachments, limits=self.settings.limits, limit=limit)
        return await self.service.search(query, scope)

    async def render(self, result: SearchResult, upload_limit: int) -> RenderedReply:
        reply = build_reply(result, caption_chars=self.settings.bot.caption_chars)
        wanted = needs_upload(reply)
        stored = await asyncio.gather(*(self.service.image_bytes(image.item) for image in wanted))
        files = [(upload_name(image), data) for image, data in zip(wanted, stored, strict=True) if data]
        unavailable = {upload_name(image) for image, data in zip(wanted, stored, strict=True) if not data}
        uploads = await asyncio.to_thread(fit_uploads, files, upload_limit)
        return render_reply(reply, uploads, unavailable)

    async def refuse(self, interaction: discord.Interaction, exc: BaseException) -> None:
        """Answer an interaction not yet acknowledged with an ephemeral error."""
        await first_answer(interaction, interaction.response.send_message(user_message(exc), ephemeral=True))

    async def fail(self, interaction: discord.Interaction, exc: BaseException, *, thinking: bool) -> None:
        """Say why a deferred interaction failed, ephemerally (the public "thinking" message goes)."""
        message = user_message(exc)
        if thinking:
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
        try:
            await interaction.followup.send(message, ephemeral=True)
        except discord.HTTPException:
            log.warning("could not tell the user about a failed search: %s", message)

    async def answer(self, interaction: discord.Interaction, text: str, files: Sequence[PendingFile],
                     size: PageSize, scope: SearchScope = COLLECTION) -> None:
        """Defer, search, follow up (or explain the failure); a page smaller than asked says so."""
        if not await first_answer(interaction, interaction.response.defer(thinking=True)):
            return
        try:
            result = size.told(await self.search(text, files, size.value, scope))
            rendered = await self.render(result, interaction.filesize_limit)
            await interaction.followup.send(**rendered.send_kwargs(), wait=True)
        except Exception as exc:  # every failure gets an answer; user_message logs the unexpected
            await self.fail(interaction, exc, thinking=True)

    # ------------------------------------------------------------------ messages

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """A DM, or a guild message that mentions the bot: searched, answered as a reply."""
        me = self.bot.user
        if me is None or message.author.bot:
            return
        in_dm = message.guild is None
        if not in_dm and not any(user.id == me.id for user in message.mentions):
            return
        try:
            self.admit(user_id=message.author.id, guild_id=message.guild.id if message.guild else None,
                       channel_id=message.channel.id, parent_id=getattr(message.channel, "parent_id", None))
        except NotAllowedHereError:
            log.debug("ignoring a message in channel %s (not in the allow-lists)", message.channel.id)
            return
        except Exception as exc:
            await self.reply_error(message, exc)
            return
        text = without_mentions(message.content, me.id)
        try:
            check_attachment_count(len(message.attachments), self.settings.bot.max_attachments)
            files = [pending(a, self.settings) for a in message.attachments]
            if not text and not files:
                raise EmptyQueryError(NOTHING_TO_SEARCH)
            scope = self.scope_for(message.guild, message.author, message.channel.id)
            async with message.channel.typing():
                result = await self.search(text, files, self.admission.limit(None), scope)
                upload_limit = message.guild.filesize_limit if message.guild else DEFAULT_UPLOAD_LIMIT
                rendered = await self.render(result, upload_limit)
            await message.reply(**rendered.send_kwargs(), mention_author=False)
        except Exception as exc:
            await self.reply_error(message, exc)

    async def reply_error(self, message: discord.Message, exc: BaseException) -> None:
        try:
            await message.reply(user_message(exc), mention_author=False,
                                allowed_mentions=discord.AllowedMentions.none())
        except discord.HTTPException:
            log.warning("could not reply to message %s", message.id)
