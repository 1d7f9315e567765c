"""`search-all serve`: every configured front end in one process, over one `SearchService`.

One store, one encoder worker, one model in memory, whatever answers: the Discord bot (when
DISCORD_TOKEN is set), the Slack app (when SLACK_BOT_TOKEN is set; HTTP or Socket Mode per
`[slack] mode`) and the web page (`[web] enabled`, or `--web`), with one /healthz and /metrics
(`[ops]`) that reports each front end. SIGTERM or Ctrl+C shuts every one down cleanly: no new
requests, those in flight answered within `[ops] shutdown_grace_seconds`, sockets closed, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from bot.discord.bot import SearchBot, Sync, running_discord_bot
from bot.ops import Probe, serve_ops, stop_on_signals, until_stopped
from bot.slack.app import EVENTS_PATH, SlackBot, running_slack_bot, wants_socket_mode
from bot.web.app import running_web
from core.config import Secrets, Settings
from core.errors import ConfigError
from core.service import SearchService

log = logging.getLogger(__name__)

NOTHING_TO_SERVE = ("nothing to serve: set DISCORD_TOKEN (Discord), SLACK_BOT_TOKEN (Slack), "
                    "or [web] enabled = true / --web (the web page)")


@dataclass(frozen=True)
class Plan:
    """Which front ends `serve` runs."""

    discord: bool
    slack: bool
    web: bool

    @classmethod
    def of(cls, settings: Settings, secrets: Secrets, *, web: bool | None = None) -> Plan:
        """Discord and Slack when their token is set, the page when asked (`web`, else
        `[web] enabled`); the secrets each one needs are checked now, before the model loads."""
        plan = cls(discord=bool(secrets.discord_token), slack=bool(secrets.slack_bot_token),
                   web=settings.web.enabled if web is None else web)
        if plan.slack:
            socket_mode = wants_socket_mode(settings, False)
            secrets.require("slack_app_token" if socket_mode else "slack_signing_secret")
        if not (plan.discord or plan.slack or plan.web):
            raise ConfigError(NOTHING_TO_SERVE)
        return plan


@dataclass
class Serving:
    """What runs (handed to `on_ready`; tests drive the front ends through it)."""

    service: SearchService
    discord: SearchBot | None = None
    slack: SlackBot | None = None
    web_url: str | None = None
    ops_port: int | None = None
    frontends: dict[str, Probe] = field(default_factory=dict)


async def serve_all(
    settings: Settings,
    secrets: Secrets,
    plan: Plan,
    *,
    stop: asyncio.Event,
    sync: Sync = False,
    on_ready: Callable[[Serving], None] | None = None,
    **discord_options: object,
) -> None:
    """Open the one search service, start the planned front ends on it, serve until `stop` is
    set (or the Discord connection fails: its `ConfigError` is raised), then close them in
    reverse order, each answering what it took first."""
    from core.startup import open_search_service

    async with open_search_service(settings, secrets=secrets) as service:
        serving = Serving(service)
        running: list[asyncio.Task] = []
        ops = settings.ops
        async with serve_ops(service, ops.health_host, ops.health_port, serving.frontends) as ops_port, \
                AsyncExitStack() as stack:
            serving.ops_port = ops_port
            if plan.web:
                serving.web_url = await stack.enter_async_context(
                    running_web(service, settings, host=settings.web.host, port=settings.web.port))
                serving.frontends["web"] = listening(stack)
                print(f"Search All web page: {serving.web_url}/", flush=True)
            if plan.slack:
                socket_mode = wants_socket_mode(settings, False)
                serving.slack = await stack.enter_async_context(
                    running_slack_bot(service, settings, secrets, socket_mode=socket_mode))
                serving.frontends["slack"] = serving.slack.health
                where = (f"listening on http://{serving.slack.address[0]}:{serving.slack.address[1]}{EVENTS_PATH}"
                         if serving.slack.address else "connected with Socket Mode")
                print(f"Search All Slack bot: {where}", flush=True)
            if plan.discord:
                token = secrets.require("discord_token")
                serving.discord, task = await stack.enter_async_context(
                    running_discord_bot(settings, service, token, sync=sync, **discord_options))
                serving.frontends["discord"] = serving.discord.health
                running.append(task)
            names = ", ".join(name for name in ("discord", "slack", "web") if getattr(plan, name))
            print(f"Search All: serving {names} on one model (Ctrl+C stops)", flush=True)
            if on_ready is not None:
                on_ready(serving)
            await until_stopped(stop, *running)
            log.info("shutting down")
            if serving.discord is not None:
                serving.discord.cog.closing = True  # at once, not after the others have closed


def listening(stack: AsyncExitStack) -> Probe:
    """The probe of a listener entered on `stack`: up until the stack closes it."""
    state = {"up": True}
    stack.callback(state.update, up=False)

    async def probe() -> tuple[bool, str]:
        return (True, "listening") if state["up"] else (False, "not listening")

    return probe


def run_serve(settings: Settings, secrets: Secrets, *, web: bool | None, sync: Sync = False) -> None:
    """`search-all serve`: blocks until SIGTERM or Ctrl+C, then shuts down cleanly (exit 0)."""
    plan = Plan.of(settings, secrets, web=web)

    async def main() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await serve_all(settings, secrets, plan, stop=stop, sync=sync)

    asyncio.run(main())
