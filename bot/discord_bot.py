"""The Discord bot: `/search`, two message context menus, mentions and DMs, result buttons.

`run_discord` is what `search-all bot discord [--sync]` runs: it opens the search service and
serves until stopped. `open_discord_bot` builds a bot around an open `SearchService` (tests drive
it against a local fake Discord). Slash commands are registered with Discord only when asked
(`sync=True`): Discord rate-limits command updates, so not on every start.

`[discord] api_base_url` and `gateway_url` point discord.py at a Discord-compatible server
(Spacebar, or the tests' fake); discord.py keeps both as class attributes, so they are set
while a bot runs and restored after (one set of endpoints per process at a time).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.actions import Action
from bot.discord_buttons import ActionButton
from bot.discord_handlers import DiscordSearch
from bot.messages import user_message
from bot.ops_server import serve_ops
from core.config import Secrets, Settings
from core.service import SearchService

log = logging.getLogger(__name__)

IMAGE_MENU = "Search with this image"
AUDIO_MENU = "Search with this audio"
OUT_OF_DATE = "This command does not match the bot: ask its admin to run `search-all bot discord --sync`"
DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)


@contextmanager
def discord_endpoints(api_base_url: str, gateway_url: str) -> Iterator[None]:
    """Point discord.py's REST calls (and its gateway, when given) elsewhere; restored on exit."""
    route = discord.http.Route
    websocket = discord.gateway.DiscordWebSocket
    saved = route.BASE, websocket.DEFAULT_GATEWAY
    route.BASE = api_base_url.rstrip("/")
    if gateway_url:
        websocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    try:
        yield
    finally:
        route.BASE, websocket.DEFAULT_GATEWAY = saved


def with_filter_words(query: str | None, include: str | None, exclude: str | None) -> str | None:
    """The `filter` / `exclude` options written into the query text as filter words."""
    words = [f'{sign}filter:"{w.replace(chr(34), "").strip()}"'
             for sign, w in (("", include), ("-", exclude)) if w and w.replace(chr(34), "").strip()]
    return " ".join([query or "", *words]).strip() or query


class SearchCog(commands.Cog):
    """The application commands; each hands its interaction to `DiscordSearch`."""

    def __init__(self, bot: commands.Bot, search: DiscordSearch):
        self.bot = bot
        self.search = search
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

    @app_commands.command(name="search", description="Search the images with words, an image or a sound")
    @app_commands.describe(
        query='words; "cat + 0.5*cartoon - photo" weighs terms, filter:word keeps prompts with that word',
        image="an image to find similar images to",
        audio="a voice message or sound to search with",
        limit="how many results (1-10)",
        filter="only images whose prompt contains this word or phrase",
        exclude="leave out images whose prompt contains this word or phrase",
    )
    async def search_command(
        self,
        interaction: discord.Interaction,
        query: str | None = None,
        image: discord.Attachment | None = None,
        audio: discord.Attachment | None = None,
        limit: app_commands.Range[int, 1, 10] | None = None,
        filter: str | None = None,
        exclude: str | None = None,
    ) -> None:
        query = with_filter_words(query, filter, exclude)
        await self.search.slash(interaction, query=query, image=image, audio=audio, limit=limit)

    async def with_image(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await self.search.context_menu(interaction, message, "image")

    async def with_audio(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await self.search.context_menu(interaction, message, "audio")


class SearchBot(commands.Bot):
    """The bot: commands from `SearchCog`, messages and buttons to `DiscordSearch`."""

    def __init__(self, search: DiscordSearch, *, sync: bool = False, **options: Any):
        intents = discord.Intents.default()
        intents.message_content = search.settings.discord.message_content_intent
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, help_command=None, **options)
        self.search = search
        self.sync_commands = sync
        self.tree.error(self.on_tree_error)

    async def setup_hook(self) -> None:
        await self.add_cog(SearchCog(self, self.search))
        self.add_dynamic_items(ActionButton)
        if self.sync_commands:
            synced = await self.tree.sync()
            log.info("registered %d application commands with Discord", len(synced))

    async def on_message(self, message: discord.Message) -> None:  # replaces prefix commands
        if self.user is not None:
            await self.search.message(message, self.user)

    async def run_search_action(self, interaction: discord.Interaction, action: Action) -> None:
        await self.search.action(interaction, action)

    async def on_tree_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        """A command that could not run: unknown, or options the bot cannot read (Discord checks
        them against the registered commands, so those are out of date: run with --sync)."""
        if isinstance(error, app_commands.CommandInvokeError):
            text = user_message(error.original)
        else:
            text = f"{OUT_OF_DATE} ({error})"
        if interaction.response.is_done():
            log.warning("command failed after its answer began: %s", error)
        else:
            await interaction.response.send_message(text, ephemeral=True)


@asynccontextmanager
async def open_discord_bot(
    settings: Settings, service: SearchService, *, sync: bool = False, **options: Any
) -> AsyncIterator[SearchBot]:
    """A bot (not started: `await bot.start(token)`), its endpoints set and its session open."""
    with discord_endpoints(settings.discord.api_base_url, settings.discord.gateway_url):
        async with aiohttp.ClientSession(timeout=DOWNLOAD_TIMEOUT) as session:
            bot = SearchBot(DiscordSearch(settings, service, session), sync=sync, **options)
            async with bot:
                yield bot


async def serve_discord(settings: Settings, service: SearchService, token: str, *, sync: bool = False) -> None:
    """Run the bot, with /healthz and /metrics on `[ops] health_host:health_port`, until it is closed."""
    async with serve_ops(service, settings.ops.health_host, settings.ops.health_port):
        async with open_discord_bot(settings, service, sync=sync) as bot:
            await bot.start(token)


def run_discord(settings: Settings, secrets: Secrets, *, sync: bool) -> None:
    """`search-all bot discord`: the token from DISCORD_TOKEN (never logged); blocks until stopped."""
    token = secrets.require("discord_token")

    async def main() -> None:
        from core.app import open_search_service

        async with open_search_service(settings, secrets=secrets) as service:
            await serve_discord(settings, service, token, sync=sync)

    asyncio.run(main())
