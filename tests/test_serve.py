"""`search-all serve`: Discord, Slack and the web page in one process on one model; a clean
shutdown on SIGTERM (requests in flight answered, exit 0); /healthz per front end.

Against the local fakes (tests/fakes/discord.py, tests/fakes/slack.py) and a tiny-model dataset.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.discord.bot import serve_discord
from bot.discord.cog import SHUTTING_DOWN
from bot.serve import NOTHING_TO_SERVE, Plan, Serving, serve_all
from core.config import Secrets, Settings
from core.encoder import Encoder
from core.errors import ConfigError
from core.query import Query, Term
from core.service import SearchService
from core.startup import open_search_service
from ingest.runner import run_ingest
from tests.fakes.discord import FakeDiscord, Interaction, Posted
from tests.fakes.slack import FakeSlack, command_body, signed_headers
from tests.media_factory import picture_folder

ROOT = Path(__file__).resolve().parent.parent
DISCORD_TOKEN = "MTE.fake-discord-bot-token.for-serve"
BOT_TOKEN = "xoxb-serve-test"
SIGNING_SECRET = "serve-signing-secret"
SECRETS = Secrets(discord_token=DISCORD_TOKEN, slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET)
WAIT_S = 20.0
FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def raw_settings(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("serve")
    raw = {
        "model": {"name": "tiny", "cache_dir": str(root / "cache")},
        "store": {"dataset": str(root / "dataset")},
        "search": {"collapse_cosine": 1.0, "default_limit": 3},
        "ops": {"refresh_seconds": 0, "health_port": 0, "shutdown_grace_seconds": WAIT_S},
    }
    pictures = picture_folder(root / "pictures", 6)
    report = run_ingest(Settings.model_validate(raw), f"folder:{pictures}", secrets=Secrets(), workers=0,
                        progress=False)
    assert report.summary.added == 6
    return raw


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def settings_for(raw: dict[str, Any], discord: FakeDiscord | None = None, slack: FakeSlack | None = None,
                 **ops: Any) -> Settings:
    """`raw` pointed at the fakes, every listener on 127.0.0.1 and a free port."""
    merged = {**raw, "ops": {**raw["ops"], **ops}, "web": {"host": "127.0.0.1", "port": 0}}
    if discord is not None:
        merged["discord"] = {"api_base_url": discord.api_base_url, "gateway_url": discord.gateway_url,
                             "attachment_hosts": [discord.cdn_host]}
    if slack is not None:
        merged["slack"] = {"api_base_url": slack.api_url, "host": "127.0.0.1", "port": 0, "file_hosts": [slack.host]}
    return Settings.model_validate(merged)


def final(interaction: Interaction) -> Posted | None:
    done = [m for m in interaction.messages if not m.loading and not m.deleted]
    return done[-1] if done else None


async def slack_command(http: aiohttp.ClientSession, serving: Serving, fake: FakeSlack, text: str) -> int:
    assert serving.slack is not None and serving.slack.address is not None
    body = command_body(text, user="U0SERVE001", channel="C0SERVE001", response_url=fake.response_url("cmd"))
    headers = {"Content-Type": FORM, **signed_headers(SIGNING_SECRET, body)}
    url = f"http://127.0.0.1:{serving.slack.address[1]}/slack/events"
    async with http.post(url, data=body.encode(), headers=headers) as response:
        return response.status


async def health(http: aiohttp.ClientSession, port: int) -> tuple[int, dict[str, Any]]:
    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
        return response.status, await response.json()


async def started(settings: Settings, plan: Plan, stop: asyncio.Event) -> tuple[asyncio.Task, Serving]:
    ready: asyncio.Future[Serving] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_all(settings, SECRETS, plan, stop=stop, on_ready=ready.set_result,
                                         guild_ready_timeout=0.05))
    done, _ = await asyncio.wait({task, ready}, timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
    assert ready in done, task.exception() if task.done() else "serve did not start"
    return task, ready.result()


async def test_serve_answers_discord_slack_and_the_web_page_on_one_model(raw_settings, monkeypatch):
    loads = []
    load = Encoder.load

    def counted_load(*args: Any, **kwargs: Any) -> Encoder:
        loads.append(args)
        return load(*args, **kwargs)

    monkeypatch.setattr(Encoder, "load", counted_load)
    async with FakeDiscord(DISCORD_TOKEN) as discord_fake, FakeSlack(bot_token=BOT_TOKEN) as slack_fake:
        settings = settings_for(raw_settings, discord_fake, slack_fake, health_port=free_port())
        plan = Plan.of(settings, SECRETS, web=True)
        assert plan == Plan(discord=True, slack=True, web=True)
        stop = asyncio.Event()
        task, serving = await started(settings, plan, stop)
        try:
            await discord_fake.wait_connected()
            expected = await serving.service.search(Query((Term("text", "a red circle"),), limit=3))
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as http:
                # Discord: the slash command, deferred then followed up with the results.
                interaction = await discord_fake.slash_command(discord_fake.snowflake(), {"query": "a red circle"})
                posted = await discord_fake.wait_for(lambda: final(interaction))
                assert interaction.ack_type == 5 and len(posted.embeds) == 3
                # Slack: /search, acked then posted.
                assert await slack_command(http, serving, slack_fake, "a red circle") == 200
                (message,) = await slack_fake.wait_for_calls("chat.postMessage")
                assert message.token == BOT_TOKEN
                # The web page: its JSON API.
                form = aiohttp.FormData(default_to_multipart=True)
                form.add_field("text", "a red circle")
                async with http.post(f"{serving.web_url}/api/search", data=form) as response:
                    assert response.status == 200
                    assert expected.items[0].id in json.dumps(await response.json())
                status, body = await health(http, serving.ops_port)
            assert status == 200 and body["rows"] == 6
            assert body["frontends"] == {"discord": "connected", "slack": "listening", "web": "listening"}
            # One model, one service, for all three.
            assert len(loads) == 1
            assert serving.discord.cog.service is serving.service and serving.slack.service is serving.service
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT_S)
        assert discord_fake.unknown_calls() == []


async def test_a_stop_answers_the_requests_in_flight_and_refuses_new_ones(raw_settings, monkeypatch):
    """What SIGTERM does (`stop_on_signals` sets the event): Discord and Slack requests taken
    before it are answered, a Discord request after it is told to try again, serve returns."""
    gate, entered = asyncio.Event(), []
    search = SearchService.search

    async def held_search(self: SearchService, query: Query, *args: Any, **kwargs: Any) -> Any:
        entered.append(query)
        await gate.wait()
        return await search(self, query, *args, **kwargs)

    async with FakeDiscord(DISCORD_TOKEN) as discord_fake, FakeSlack(bot_token=BOT_TOKEN) as slack_fake:
        settings = settings_for(raw_settings, discord_fake, slack_fake)
        stop = asyncio.Event()
        task, serving = await started(settings, Plan(discord=True, slack=True, web=False), stop)
        monkeypatch.setattr(SearchService, "search", held_search)
        try:
            await discord_fake.wait_connected()
            taken = await discord_fake.slash_command(discord_fake.snowflake(), {"query": "a red circle"})
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as http:
                assert await slack_command(http, serving, slack_fake, "a blue square") == 200
            for _ in range(2000):  # both searches are waiting (bounded)
                if len(entered) == 2:
                    break
                await asyncio.sleep(0.005)
            assert len(entered) == 2 and taken.ack_type == 5
            stop.set()
            for _ in range(2000):
                if serving.discord.cog.closing:
                    break
                await asyncio.sleep(0.005)
            late = await discord_fake.slash_command(discord_fake.snowflake(), {"query": "too late"})
            refused = await discord_fake.wait_for(lambda: final(late))
            assert late.ack_type == 4 and refused.ephemeral and SHUTTING_DOWN in refused.content.lower()
            assert not task.done()  # still waiting for the two answers
        finally:
            gate.set()
        await asyncio.wait_for(task, WAIT_S)  # returns: no error
        answer = final(taken)
        assert answer is not None and len(answer.embeds) == 3 and not answer.ephemeral
        assert len(slack_fake.calls_to("chat.postMessage")) == 1
        assert len(entered) == 2


async def test_healthz_is_503_when_the_discord_gateway_drops(raw_settings):
    async with FakeDiscord(DISCORD_TOKEN) as fake:
        port = free_port()
        settings = settings_for(raw_settings, fake, health_port=port)
        stop = asyncio.Event()
        async with open_search_service(settings, secrets=Secrets(), progress=False) as service:
            task = asyncio.create_task(serve_discord(settings, service, DISCORD_TOKEN, stop=stop,
                                                     guild_ready_timeout=0.05))
            try:
                await fake.wait_connected()
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as http:
                    for _ in range(400):  # READY reaches the bot just after the fake counts it
                        status, body = await health(http, port)
                        if status == 200:
                            break
                        await asyncio.sleep(0.01)
                    assert status == 200 and body["frontends"] == {"discord": "connected"}
                    await fake.drop_gateway()
                    for _ in range(400):
                        status, body = await health(http, port)
                        if status == 503:
                            break
                        await asyncio.sleep(0.01)
                assert status == 503 and body["status"] == "down"
                assert body["frontends"] == {"discord": "disconnected"} and "discord" in body["reason"]
                assert body["rows"] == 6 and body["model"] == "tiny"  # the dataset and encoder checks stay
            finally:
                stop.set()
                await asyncio.wait_for(task, WAIT_S)


async def test_healthz_says_slack_socket_mode_is_connected(raw_settings):
    async with FakeSlack(bot_token=BOT_TOKEN) as fake:
        settings = settings_for(raw_settings, slack=fake, health_port=free_port())
        settings = Settings.model_validate({**settings.model_dump(), "slack": {
            **settings.slack.model_dump(), "mode": "socket"}})
        secrets = Secrets(slack_bot_token=BOT_TOKEN, slack_app_token=fake.app_token)
        stop = asyncio.Event()
        ready: asyncio.Future[Serving] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve_all(settings, secrets, Plan.of(settings, secrets), stop=stop,
                                             on_ready=ready.set_result))
        try:
            serving = await asyncio.wait_for(ready, WAIT_S)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as http:
                status, body = await health(http, serving.ops_port)
            assert status == 200 and body["frontends"] == {"slack": "connected"}
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT_S)


def test_serve_without_any_front_end_says_what_to_set():
    with pytest.raises(ConfigError, match="DISCORD_TOKEN") as refused:
        Plan.of(Settings(), Secrets(), web=None)
    assert str(refused.value) == NOTHING_TO_SERVE
    with pytest.raises(ConfigError, match="SLACK_SIGNING_SECRET"):
        Plan.of(Settings(), Secrets(slack_bot_token=BOT_TOKEN), web=None)


async def test_sigterm_stops_the_discord_bot_cleanly_after_answering(raw_settings, tmp_path):
    """`search-all bot discord` in a process of its own: SIGTERM is a clean exit 0, the slash
    command it had taken answered (it used to die with -15, the gateway dropped)."""
    async with FakeDiscord(DISCORD_TOKEN) as fake:
        settings = settings_for(raw_settings, fake)
        config = tmp_path / "config.toml"
        config.write_text(toml(settings.model_dump(mode="json", exclude_unset=True)))
        env = {**os.environ, "DISCORD_TOKEN": DISCORD_TOKEN, "PYTHONPATH": str(ROOT)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot.cli", "bot", "discord", "--config", str(config),
            cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            await fake.wait_connected(timeout=60)
            interaction = await fake.slash_command(fake.snowflake(), {"query": "a red circle"})
            await fake.wait_for(lambda: interaction.ack_type is not None)
            process.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(process.communicate(), 60)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, err.decode()[-2000:]
        answer = final(interaction)
        assert answer is not None and len(answer.embeds) == 3
        assert b"Traceback" not in err


def toml(data: dict[str, Any]) -> str:
    """Settings as TOML (tables of scalars and lists of strings are all these tests set)."""
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- Slack first, shutdown together


def held_searches(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, list[Any], list[Any]]:
    """Every search waits for the returned gate; `entered` lists those that started waiting,
    `given_up` those cancelled while waiting."""
    gate, entered, given_up = asyncio.Event(), [], []
    search = SearchService.search

    async def held_search(self: SearchService, query: Query, *args: Any, **kwargs: Any) -> Any:
        entered.append(query)
        try:
            await gate.wait()
        except asyncio.CancelledError:
            given_up.append(query)
            raise
        return await search(self, query, *args, **kwargs)

    monkeypatch.setattr(SearchService, "search", held_search)
    return gate, entered, given_up


async def until(predicate: Any) -> None:
    for _ in range(4000):  # bounded: 20 s at most
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("never happened")


async def refuses_connections(url: str) -> bool:
    """Whether `url`'s listener is closed (a new connection is refused), polled for 20 s at most."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                     timeout=aiohttp.ClientTimeout(total=WAIT_S)) as probe:
        for _ in range(4000):
            try:
                async with probe.get(url):
                    pass
            except aiohttp.ClientConnectorError:
                return True
            await asyncio.sleep(0.005)
    return False


async def web_search(http: aiohttp.ClientSession, web_url: str, text: str) -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("text", text)
    async with http.post(f"{web_url}/api/search", data=form) as response:
        return response.status, await response.json()


async def test_front_ends_shut_down_together_and_answer_what_they_took(raw_settings, monkeypatch):
    """A stop closes the Slack listener and the web page at once, each answering the request it
    had taken: both listeners refuse new connections while both answers are still held (one
    after the other, the page would listen until Slack's answer was sent)."""
    async with FakeSlack(bot_token=BOT_TOKEN) as slack_fake, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as http:
        settings = settings_for(raw_settings, slack=slack_fake)
        stop = asyncio.Event()
        task, serving = await started(settings, Plan(discord=False, slack=True, web=True), stop)
        gate, entered, given_up = held_searches(monkeypatch)
        try:
            assert serving.slack is not None and serving.slack.address is not None
            slack_url = f"http://127.0.0.1:{serving.slack.address[1]}/slack/events"
            assert await slack_command(http, serving, slack_fake, "a blue square") == 200
            on_the_page = asyncio.create_task(web_search(http, serving.web_url, "a red circle"))
            await until(lambda: len(entered) == 2)
            stop.set()
            assert await refuses_connections(f"{serving.web_url}/") and await refuses_connections(slack_url)
            assert given_up == [] and not on_the_page.done() and not task.done()  # both still held
            assert not slack_fake.calls_to("chat.postMessage")
            gate.set()
            status, body = await asyncio.wait_for(on_the_page, WAIT_S)
            assert status == 200 and len(body["images"]) == 3
        finally:
            gate.set()
            stop.set()
            await asyncio.wait_for(task, WAIT_S)
        assert len(slack_fake.calls_to("chat.postMessage")) == 1


async def test_a_web_request_in_flight_at_shutdown_is_bounded_by_the_grace_period(raw_settings, monkeypatch):
    """`[ops] shutdown_grace_seconds` bounds the page's request in flight (it was aiohttp's own
    60 s): a search that never ends does not hold the stop."""
    settings = settings_for(raw_settings, shutdown_grace_seconds=0.2)
    stop = asyncio.Event()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as http:
        task, serving = await started(settings, Plan(discord=False, slack=False, web=True), stop)
        gate, entered, given_up = held_searches(monkeypatch)
        try:
            on_the_page = asyncio.create_task(web_search(http, serving.web_url, "a red circle"))
            await until(lambda: len(entered) == 1)
            stop.set()
            await asyncio.wait_for(task, WAIT_S)  # returns: the held search was given up on
            (ended,) = await asyncio.gather(on_the_page, return_exceptions=True)
            assert isinstance(ended, aiohttp.ClientError)  # the connection closed, unanswered
            assert given_up == entered
        finally:
            gate.set()


async def test_serve_listens_for_slack_before_the_model_loads(raw_settings):
    """`serve` with Slack over HTTP: the listener answers Slack's URL check and tells a search
    "starting up" while the service is still opening; once open, searches are answered."""
    gate, loading = asyncio.Event(), asyncio.Event()

    @asynccontextmanager
    async def slow_open(settings: Settings, *, secrets: Secrets) -> AsyncIterator[SearchService]:
        loading.set()
        await gate.wait()
        async with open_search_service(settings, secrets=secrets, progress=False) as service:
            yield service

    async with FakeSlack(bot_token=BOT_TOKEN) as fake, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as http:
        port = free_port()
        settings = settings_for(raw_settings, slack=fake)
        settings = settings.model_copy(update={"slack": settings.slack.model_copy(update={"port": port})})
        url = f"http://127.0.0.1:{port}/slack/events"
        stop = asyncio.Event()
        ready: asyncio.Future[Serving] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve_all(settings, SECRETS, Plan(discord=False, slack=True, web=False),
                                             stop=stop, on_ready=ready.set_result, open_service=slow_open))
        try:
            await asyncio.wait_for(loading.wait(), WAIT_S)
            challenge = json.dumps({"token": "t", "challenge": "ping-1", "type": "url_verification"})
            headers = {"Content-Type": "application/json", **signed_headers(SIGNING_SECRET, challenge)}
            async with http.post(url, data=challenge.encode(), headers=headers) as response:
                assert response.status == 200 and await response.json() == {"challenge": "ping-1"}
            body = command_body("a red circle", user="U0SERVE001", channel="C0SERVE001",
                                response_url=fake.response_url("early"))
            headers = {"Content-Type": FORM, **signed_headers(SIGNING_SECRET, body)}
            async with http.post(url, data=body.encode(), headers=headers) as response:
                assert response.status == 200
            await fake.wait_for(lambda: bool(fake.responses))
            assert "starting up" in fake.responses[0]["text"] and not ready.done()
            gate.set()
            serving = await asyncio.wait_for(ready, WAIT_S)
            assert await slack_command(http, serving, fake, "a red circle") == 200
            (posted,) = await fake.wait_for_calls("chat.postMessage")
            assert posted.token == BOT_TOKEN and len(fake.responses) == 1
        finally:
            gate.set()
            stop.set()
            await asyncio.wait_for(task, WAIT_S)
