"""The Discord flows: /search, the context menus, mentions and DMs, and the buttons.

Every interaction follows Discord's clock: the checks that need no I/O (allow-lists, the
per-user rate limit, attachment kinds and declared sizes, the query syntax) run first and a
refusal is an instant ephemeral reply; otherwise the interaction is deferred at once (Discord
wants an answer within 3 s) and the download, search and upload follow (the token lives 15 min).
A failure after the defer deletes the "thinking" message and says why in an ephemeral followup.
Messages (mentions, DMs) get a normal reply, errors included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import aiohttp
import discord

from bot.actions import Action, MoreLikeThis, run_action
from bot.discord_inputs import PendingFile, check_file, check_files, fetch_files, first_of_kind, without_mentions
from bot.discord_render import MAX_EMBEDS, RenderedReply, fit_uploads, needs_upload, render_reply, upload_name
from bot.inputs import MediaKind, build_query
from bot.messages import NotAllowedHereError, user_message
from bot.ratelimit import RateLimiter
from bot.reply import build_reply
from core.config import Settings
from core.errors import EmptyQueryError
from core.query import parse_query_text
from core.service import SearchResult, SearchService

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = discord.utils.DEFAULT_FILE_SIZE_LIMIT_BYTES
NOTHING_TO_SEARCH = "mention me with some words, an image or a voice message to search for"


class DiscordSearch:
    """What the bot does with a request; holds the service, the rate limiter and a download session."""

    def __init__(self, settings: Settings, service: SearchService, session: aiohttp.ClientSession,
                 limiter: RateLimiter | None = None):
        self.settings = settings
        self.service = service
        self.session = session
        self.limiter = limiter or RateLimiter(settings.bot.rate_limit_per_minute, settings.bot.rate_limit_burst)

    # ------------------------------------------------------------------ checks

    def admit(self, *, user_id: int, guild_id: int | None, channel_id: int | None, parent_id: int | None) -> None:
        """The allow-lists of `[discord]` (a DM is in no listed guild or channel), then the rate limit."""
        allowed = self.settings.discord
        if allowed.allowed_guilds and guild_id not in allowed.allowed_guilds:
            raise NotAllowedHereError()
        if allowed.allowed_channels and not {channel_id, parent_id} & set(allowed.allowed_channels):
            raise NotAllowedHereError()
        self.limiter.check(f"discord:{user_id}")

    def admit_interaction(self, interaction: discord.Interaction) -> None:
        self.admit(
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            parent_id=getattr(interaction.channel, "parent_id", None),
        )

    def limit(self, asked: int | None) -> int:
        """Results per page: what was asked (or the default), within `[search] max_limit` and the
        10 embeds of one message (so "Next page" starts after the last result shown)."""
        search = self.settings.search
        return max(1, min(asked or search.default_limit, search.max_limit, MAX_EMBEDS))

    def check_text(self, text: str) -> None:
        limits = self.settings.limits
        parse_query_text(text, max_chars=limits.max_query_chars, max_terms=limits.max_terms)

    # ------------------------------------------------------------------ searching and rendering

    async def search(self, text: str, files: Sequence[PendingFile], limit: int) -> SearchResult:
        attachments = await fetch_files(
            self.session, files, allowed_hosts=self.settings.discord.attachment_hosts, limits=self.settings.limits
        )
        query = build_query(text, attachments, limits=self.settings.limits, limit=limit)
        return await self.service.search(query)

    async def render(self, result: SearchResult, upload_limit: int) -> RenderedReply:
        reply = build_reply(result, caption_chars=self.settings.bot.caption_chars)
        wanted = needs_upload(reply)
        stored = await asyncio.gather(*(self.service.image_bytes(image.item) for image in wanted))
        files = [(upload_name(image), data) for image, data in zip(wanted, stored, strict=True) if data]
        unavailable = {upload_name(image) for image, data in zip(wanted, stored, strict=True) if not data}
        uploads = await asyncio.to_thread(fit_uploads, files, upload_limit)
        return render_reply(reply, uploads, unavailable)

    # ------------------------------------------------------------------ interactions

    async def refuse(self, interaction: discord.Interaction, exc: BaseException) -> None:
        """Answer an interaction not yet acknowledged with an ephemeral error."""
        await interaction.response.send_message(user_message(exc), ephemeral=True)

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
                     limit: int) -> None:
        """Defer, search, follow up (or explain the failure)."""
        await interaction.response.defer(thinking=True)
        try:
            result = await self.search(text, files, limit)
            rendered = await self.render(result, interaction.filesize_limit)
            await interaction.followup.send(**rendered.send_kwargs(), wait=True)
        except Exception as exc:  # every failure gets an answer; user_message logs the unexpected
            await self.fail(interaction, exc, thinking=True)

    async def slash(self, interaction: discord.Interaction, *, query: str | None, image: discord.Attachment | None,
                    audio: discord.Attachment | None, limit: int | None) -> None:
        text = (query or "").strip()
        try:
            self.admit_interaction(interaction)
            files = [check_file(a, self.settings.limits, expect=kind)
                     for a, kind in ((image, "image"), (audio, "audio")) if a is not None]
            if not text and not files:
                raise EmptyQueryError("the search is empty: type a query, or attach an image or audio clip")
            self.check_text(text)
        except Exception as exc:
            return await self.refuse(interaction, exc)
        await self.answer(interaction, text, files, self.limit(limit))

    async def context_menu(self, interaction: discord.Interaction, message: discord.Message,
                           kind: MediaKind) -> None:
        try:
            self.admit_interaction(interaction)
            files = [check_file(first_of_kind(message, kind), self.settings.limits)]
        except Exception as exc:
            return await self.refuse(interaction, exc)
        await self.answer(interaction, "", files, self.limit(None))

    async def action(self, interaction: discord.Interaction, action: Action) -> None:
        """A button: "More like #N" answers with a new message, "Next page" edits the message."""
        try:
            self.admit_interaction(interaction)
        except Exception as exc:
            return await self.refuse(interaction, exc)
        more = isinstance(action, MoreLikeThis)
        await interaction.response.defer(thinking=more)
        try:
            result = await run_action(self.service, action, self.limit(None))
            rendered = await self.render(result, interaction.filesize_limit)
            if more:
                await interaction.followup.send(**rendered.send_kwargs(), wait=True)
            else:
                await interaction.edit_original_response(**rendered.edit_kwargs())
        except Exception as exc:
            await self.fail(interaction, exc, thinking=more)

    # ------------------------------------------------------------------ messages

    async def message(self, message: discord.Message, me: discord.abc.User) -> None:
        """A DM, or a guild message that mentions the bot: searched, answered as a reply."""
        if message.author.bot:
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
            files = check_files(message.attachments, self.settings.limits, self.settings.bot.max_attachments)
            if not text and not files:
                raise EmptyQueryError(NOTHING_TO_SEARCH)
            async with message.channel.typing():
                result = await self.search(text, files, self.limit(None))
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
