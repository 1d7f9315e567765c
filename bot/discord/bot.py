"""The Discord bot: `/search`, two message context menus, mentions and DMs, result buttons.

`run_discord` is what `search-all bot discord [--sync [GUILD_ID]]` runs: it opens the search
service and serves until stopped (SIGTERM or Ctrl+C: `SearchBot.shut_down` refuses new requests,
lets those in flight finish for `[ops] shutdown_grace_seconds`, closes the gateway; exit 0).
`open_discord_bot` builds a bot around an open `SearchService` (tests drive it against a local
fake Discord); `running_discord_bot` runs one (also inside `search-all serve`, bot/serve.py).
Slash commands are registered with Discord only when asked (`sync=True` globally,
`sync=GUILD_ID` in one server at once, for development): Discord rate-limits command updates,
so not on every start.

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
from bot.discord.memory import MemoryCog
from bot.discord.render import ActionButton
from bot.ops import serve_ops, stop_on_signals, until_stopped
from core.config import Secrets, Settings
from core.errors import ConfigError
from core.service import SearchService

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)
# View Channel, Send Messages, Embed Links, Attach Files, Read Message History (docs/discord.md).
INVITE_PERMISSIONS = discord.Permissions(117760)
BAD_TOKEN = ("Discord refused the token in DISCORD_TOKEN: copy it again from the Developer Portal "
             "(your application > Bot > Reset Token)")
INTENT_REFUSED = ("Discord refused the Message Content intent: turn on \"Message Content Intent\" in the "
                  "Developer Portal (your application > Bot > Privileged Gateway Intents), or set "
                  "[discord] message_content_intent = false (mentions and DMs work without it)")
MEMORY_INTENT_REFUSED = ("Discord refused the Message Content intent, which channel memory needs to see the images "
                         "posted in channels: turn on \"Message Content Intent\" in the Developer Portal (your "
                         "application > Bot > Privileged Gateway Intents), or set [memory] enabled = false")
SYNC_REFUSED = ("Discord refused to register the commands{where}: invite the bot with the "
                "applications.commands scope (docs/discord.md, step 2){guild}")

Sync = bool | int  # False: no registration, True: global, a guild id: that server only (instant)


def invite_url(application_id: int) -> str:
    return discord.utils.oauth_url(application_id, permissions=INVITE_PERMISSIONS,
                                   scopes=("bot", "applications.commands"))


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
                 sync: Sync = False, **options: Any):
        intents = discord.Intents.default()
        # Channel memory sees the images of every message only with Message Content (docs/memory.md).
        self.memory_on = service.channel_memory is not None
        intents.message_content = settings.discord.message_content_intent or self.memory_on
        super().__init__(command_prefix=commands.when_mentioned, intents=intents, help_command=None, **options)
        self.cog = SearchCog(self, settings, service, session)
        memory = service.channel_memory
        self.memory_cog = None if memory is None or self.cog.access is None else MemoryCog(
            self, settings, memory, session, self.cog.access, self.cog.admit_interaction)
        self.sync_commands = sync
        self.announced = False
        self.gateway_up = False  # READY or RESUMED seen, and no disconnect since
        self.tree.error(self.on_tree_error)

    async def setup_hook(self) -> None:
        await self.add_cog(self.cog)
        if self.memory_cog is not None:
            await self.add_cog(self.memory_cog)
        self.add_dynamic_items(ActionButton)
        if self.sync_commands is not False:
            await self.register_commands(None if self.sync_commands is True else int(self.sync_commands))

    async def register_commands(self, guild_id: int | None) -> None:
        """Globally (they can take a while to reach every server), or in one server at once."""
        guild = None if guild_id is None else discord.Object(id=guild_id)
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        try:
            synced = await self.tree.sync(guild=guild)
        except discord.Forbidden as exc:
            where, hint = ("", "") if guild_id is None else (
                f" in server {guild_id}", ", and check that it is a member of that server")
            raise ConfigError(SYNC_REFUSED.format(where=where, guild=hint)) from exc
        scope = "globally" if guild_id is None else f"in server {guild_id}"
        log.info("registered %d application commands with Discord %s", len(synced), scope)

    async def on_ready(self) -> None:
        """Once per process: who the bot is, where, and the link that adds it to a server."""
        if self.announced or self.user is None:
            return
        self.announced = True
        invite = invite_url(self.application_id) if self.application_id else "(no application id)"
        print(f"Search All Discord bot: logged in as {self.user} (id {self.user.id}) in "
              f"{len(self.guilds)} servers; invite it with {invite}", flush=True)

    async def on_message(self, message: discord.Message) -> None:
        """No prefix commands: the cog's listener answers mentions and DMs."""

    async def on_connect(self) -> None:
        self.gateway_up = True

    async def on_resumed(self) -> None:
        self.gateway_up = True

    async def on_disconnect(self) -> None:
        self.gateway_up = False

    async def health(self) -> tuple[bool, str]:
        """For /healthz: is the gateway connected (discord.py reconnects by itself after a drop)."""
        up = self.gateway_up and not self.is_closed()
        return up, "connected" if up else "disconnected"

    async def shut_down(self, grace_s: float) -> None:
        """Refuse new requests, give those in flight `grace_s` seconds to be answered, close."""
        self.cog.closing = True
        if self.memory_cog is not None:
            await self.memory_cog.cog_unload()
        in_flight = set(self.cog.in_flight)
        if in_flight:
            log.info("shutting down: answering %d requests in flight", len(in_flight))
            _, late = await asyncio.wait(in_flight, timeout=grace_s)
            if late:
                log.warning("shutting down: %d requests not answered within %.0f s", len(late), grace_s)
        await self.close()

    async def on_tree_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        """Errors of the context menus and of commands the bot does not know; the cog's own
        commands were answered by `SearchCog.cog_app_command_error`."""
        binding = getattr(interaction.command, "binding", None)
        if binding is not None and binding in (self.cog, self.memory_cog):
            return
        await answer_command_error(interaction, error)


@asynccontextmanager
async def open_discord_bot(
    settings: Settings, service: SearchService, *, sync: Sync = False, **options: Any
) -> AsyncIterator[SearchBot]:
    """A bot (not started: `await bot.start(token)`), its endpoints set and its session open."""
    with discord_endpoints(settings.discord.api_base_url, settings.discord.gateway_url):
        async with aiohttp.ClientSession(timeout=DOWNLOAD_TIMEOUT) as session:
            bot = SearchBot(settings, service, session, sync=sync, **options)
            async with bot:
                yield bot


async def connect(bot: SearchBot, token: str) -> None:
    """`bot.start`, until the bot is closed; set-up mistakes (a wrong token, a refused intent)
    are a `ConfigError` naming the fix."""
    try:
        await bot.start(token)
    except discord.LoginFailure:
        raise ConfigError(BAD_TOKEN) from None
    except discord.PrivilegedIntentsRequired:
        raise ConfigError(MEMORY_INTENT_REFUSED if bot.memory_on else INTENT_REFUSED) from None


@asynccontextmanager
async def running_discord_bot(
    settings: Settings, service: SearchService, token: str, *, sync: Sync = False, **options: Any
) -> AsyncIterator[tuple[SearchBot, asyncio.Task]]:
    """The bot connecting (the task ends when it is closed, or raises a set-up `ConfigError`);
    on exit it is shut down: new requests refused, those in flight answered (bounded), closed."""
    async with open_discord_bot(settings, service, sync=sync, **options) as bot:
        task = asyncio.create_task(connect(bot, token), name="discord gateway")
        try:
            yield bot, task
        finally:
            await bot.shut_down(settings.ops.shutdown_grace_seconds)
            if not task.done():
                await asyncio.wait({task}, timeout=10)
            if not task.done():
                task.cancel()
            elif not task.cancelled() and task.exception() is not None:
                log.debug("the Discord connection ended with %r", task.exception())


async def serve_discord(settings: Settings, service: SearchService, token: str, *, sync: Sync = False,
                        stop: asyncio.Event | None = None, **options: Any) -> None:
    """Run the bot, with /healthz and /metrics on `[ops] health_host:health_port`, until `stop`
    is set (then shut down cleanly) or the bot is closed. Set-up mistakes (a wrong token, a
    refused intent) are a `ConfigError` naming the fix."""
    frontends: dict[str, Any] = {}
    async with serve_ops(service, settings.ops.health_host, settings.ops.health_port, frontends):
        async with running_discord_bot(settings, service, token, sync=sync, **options) as (bot, task):
            frontends["discord"] = bot.health
            await until_stopped(stop or asyncio.Event(), task)


def run_discord(settings: Settings, secrets: Secrets, *, sync: Sync) -> None:
    """`search-all bot discord`: the token from DISCORD_TOKEN (never logged); blocks until
    SIGTERM or Ctrl+C, then shuts down cleanly (exit 0)."""
    token = secrets.require("discord_token")

    async def main() -> None:
        from core.startup import open_search_service

        stop = asyncio.Event()
        with stop_on_signals(stop):
            async with open_search_service(settings, secrets=secrets) as service:
                await serve_discord(settings, service, token, sync=sync, stop=stop)

    asyncio.run(main())
