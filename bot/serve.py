"""`search-all serve`: every configured front end in one process, over one `SearchService`.

One store, one encoder worker, one model in memory, whatever answers: the Discord bot (when
DISCORD_TOKEN is set), the Slack app (when SLACK_BOT_TOKEN is set, or `[slack] oauth`; HTTP
or Socket Mode per `[slack] mode`; it listens before the model has loaded) and the web page (`[web] enabled`, or `--web`), with one /healthz and /metrics
(`[ops]`) that reports each front end. SIGTERM or Ctrl+C shuts every one down cleanly and at
the same time: no new requests, those in flight answered within `[ops] shutdown_grace_seconds`
(one grace period for all), sockets closed, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Self, TypeVar

from bot.discord.bot import SearchBot, Sync, running_discord_bot
from bot.ops import Probe, serve_ops, stop_on_signals, until_stopped
from bot.slack.app import ServiceOpener, SlackBot, running_slack_bot, wants_socket_mode
from bot.slack.app import where as slack_where
from bot.slack.startup import check_secrets
from bot.web.app import running_web
from core.config import Secrets, Settings
from core.errors import ConfigError
from core.service import SearchService

log = logging.getLogger(__name__)
T = TypeVar("T")

NOTHING_TO_SERVE = ("nothing to serve: set DISCORD_TOKEN (Discord), SLACK_BOT_TOKEN or [slack] oauth = true (Slack), "
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
        plan = cls(discord=bool(secrets.discord_token),
                   slack=bool(secrets.slack_bot_token) or settings.slack.oauth,
                   web=settings.web.enabled if web is None else web)
        if plan.slack:
            check_secrets(settings, secrets, socket_mode=wants_socket_mode(settings, False))
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
    open_service: ServiceOpener | None = None,
    **discord_options: object,
) -> None:
    """Start the planned front ends on one search service (`open_service`, by default
    `core.startup.open_search_service`), serve until `stop` is set (or the Discord connection
    fails: its `ConfigError` is raised), then shut every front end down at once, each answering
    what it took within `[ops] shutdown_grace_seconds`, before the service closes. The Slack app
    listens (or connects) before the service opens: Slack's URL check passes and searches are
    told "starting up" while the model loads."""
    if open_service is None:
        from core.startup import open_search_service as open_service
    async with FrontEnds() as front_ends:
        slack: SlackBot | None = None
        if plan.slack:
            socket_mode = wants_socket_mode(settings, False)
            slack = await front_ends.enter(running_slack_bot(None, settings, secrets, socket_mode=socket_mode))
            print(f"Search All Slack bot: {slack_where(slack)}; loading the collection and the model", flush=True)
        async with open_service(settings, secrets=secrets) as service:
            serving = Serving(service, slack=slack)
            ops = settings.ops
            async with serve_ops(service, ops.health_host, ops.health_port, serving.frontends) as ops_port:
                serving.ops_port = ops_port
                try:
                    await start_on(service, serving, front_ends, settings, secrets, plan, sync, discord_options)
                    names = ", ".join(name for name in ("discord", "slack", "web") if getattr(plan, name))
                    print(f"Search All: serving {names} on one model (Ctrl+C stops)", flush=True)
                    if on_ready is not None:
                        on_ready(serving)
                    await until_stopped(stop, *front_ends.running)
                    log.info("shutting down")
                finally:
                    await front_ends.close()  # all at once, while the service is still open


async def start_on(service: SearchService, serving: Serving, front_ends: FrontEnds, settings: Settings,
                   secrets: Secrets, plan: Plan, sync: Sync, discord_options: dict[str, object]) -> None:
    """The Slack app gets the service; the page and the Discord bot start on it."""
    if serving.slack is not None:
        serving.slack.attach(service)
        serving.frontends["slack"] = serving.slack.health
    if plan.web:
        serving.web_url = await front_ends.enter(
            running_web(service, settings, host=settings.web.host, port=settings.web.port))
        serving.frontends["web"] = front_ends.listening
        print(f"Search All web page: {serving.web_url}/", flush=True)
    if plan.discord:
        token = secrets.require("discord_token")
        serving.discord, task = await front_ends.enter(
            running_discord_bot(settings, service, token, sync=sync, **discord_options))
        serving.frontends["discord"] = serving.discord.health
        front_ends.running.append(task)


class FrontEnds:
    """Front ends entered one by one (each an async context manager, held open by a task of its
    own) and left all at once by `close`: their shutdowns overlap, so a stop takes one grace
    period (`[ops] shutdown_grace_seconds`), not one per front end."""

    def __init__(self) -> None:
        self.running: list[asyncio.Task] = []  # connections whose end stops `serve` (Discord's)
        self.closing = False
        self._held: list[tuple[asyncio.Task[None], asyncio.Event]] = []

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def enter(self, context: AbstractAsyncContextManager[T]) -> T:
        """What `context` gives, once entered; its exit runs in `close`."""
        entered: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        leave = asyncio.Event()

        async def hold() -> None:
            async with context as value:
                entered.set_result(value)
                await leave.wait()

        task = asyncio.create_task(hold())
        self._held.append((task, leave))
        await asyncio.wait({task, entered}, return_when=asyncio.FIRST_COMPLETED)
        if not entered.done():
            task.result()  # entering failed: its error
        return entered.result()

    async def close(self) -> None:
        """Leave every front end at once and wait for all; the first error is raised after."""
        self.closing = True
        held, self._held = self._held, []
        for _, leave in held:
            leave.set()
        results = await asyncio.gather(*(task for task, _ in held), return_exceptions=True)
        errors = [result for result in results if isinstance(result, Exception)]
        if errors:
            raise errors[0]

    async def listening(self) -> tuple[bool, str]:
        """The probe of a listener held here: up until `close`."""
        return (False, "not listening") if self.closing else (True, "listening")


def run_serve(settings: Settings, secrets: Secrets, *, web: bool | None, sync: Sync = False) -> None:
    """`search-all serve`: blocks until SIGTERM or Ctrl+C, then shuts down cleanly (exit 0)."""
    plan = Plan.of(settings, secrets, web=web)

    async def main() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await serve_all(settings, secrets, plan, stop=stop, sync=sync)

    asyncio.run(main())
