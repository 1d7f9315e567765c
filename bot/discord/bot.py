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

from bot.discord.cog import SearchCog, answer_command_error
from bot.discord.render import ActionButton
from bot.ops import serve_ops
from core.config import Secrets, Settings
from core.service import SearchService

log = logging.getLogger(__name__)

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


class SearchBot(commands.Bot):
    """The bot: its one cog (`bot.discord.cog.SearchCog`) answers commands, messages and buttons."""

    def __init__(self, settings: Settings, service: SearchService, session: aiohttp.ClientSession, *,
                 sync: bool = False, **options: Any):
        intents = discord.Intents.default()
        intents.message_content = settings.discord.message_content_intent
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, help_command=None, **options)
        self.cog = SearchCog(self, settings, service, session)
        self.sync_commands = sync
        self.tree.error(self.on_tree_error)

    async def setup_hook(self) -> None:
        await self.add_cog(self.cog)
        self.add_dynamic_items(ActionButton)
        if self.sync_commands:
            synced = await self.tree.sync()
            log.info("registered %d application commands with Discord", len(synced))

    async def on_message(self, message: discord.Message) -> None:
        """No prefix commands: the cog's listener answers mentions and DMs."""

    async def on_tree_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        """Errors of the context menus and of commands the bot does not know; the cog's own
        commands were answered by `SearchCog.cog_app_command_error`."""
        if getattr(interaction.command, "binding", None) is self.cog:
            return
        await answer_command_error(interaction, error)


@asynccontextmanager
async def open_discord_bot(
    settings: Settings, service: SearchService, *, sync: bool = False, **options: Any
) -> AsyncIterator[SearchBot]:
    """A bot (not started: `await bot.start(token)`), its endpoints set and its session open."""
    with discord_endpoints(settings.discord.api_base_url, settings.discord.gateway_url):
        async with aiohttp.ClientSession(timeout=DOWNLOAD_TIMEOUT) as session:
            bot = SearchBot(settings, service, session, sync=sync, **options)
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
        from core.startup import open_search_service

        async with open_search_service(settings, secrets=secrets) as service:
            await serve_discord(settings, service, token, sync=sync)

    asyncio.run(main())
