"""The Slack app's start: the tokens checked once with one clear line each (a bad bot token, a
bad app-level token), Bolt's "token will be unused" warning gone, and the HTTP listener
answering from the first second while the collection and the model load.

Against the local Slack server (tests/fakes/slack.py) and a tiny-model dataset.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from bot.common.reply import MoreLikeThis, decode_action
from bot.slack.app import (
    EVENTS_PATH,
    TOKEN_REFUSED,
    SlackBot,
    running_slack_bot,
    serve_slack,
)
from bot.slack.startup import CLIENT_WITHOUT_OAUTH, OAUTH_NEEDS_HTTP, check_secrets
from core.config import Secrets, Settings
from core.errors import ConfigError
from core.query import Query, Term
from core.service import SearchService
from core.startup import open_search_service
from ingest.runner import run_ingest
from tests.fakes.slack import (
    WAIT_S,
    FakeSlack,
    command_body,
    event_payload,
    message_event,
    signed_headers,
)
from tests.media_factory import picture_folder

BOT_TOKEN = "xoxb-startup-test"
SIGNING_SECRET = "startup-signing-secret"
APP_TOKEN = "xapp-1-startup-test"
SECRETS = Secrets(slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET, slack_app_token=APP_TOKEN)
FORM = "application/x-www-form-urlencoded"
USER, CHANNEL = "U0START001", "C0START001"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("slack-startup")
    raw = {
        "model": {"name": "tiny", "cache_dir": str(root / "cache")},
        "store": {"dataset": str(root / "dataset")},
        "search": {"collapse_cosine": 1.0, "default_limit": 3},
        "speech": {"engine": "none"},
        "ops": {"refresh_seconds": 0, "health_port": 0, "shutdown_grace_seconds": WAIT_S},
    }
    report = run_ingest(Settings.model_validate(raw), f"folder:{picture_folder(root / 'pictures', 6)}",
                        secrets=Secrets(), workers=0, progress=False)
    assert report.summary.added == 6
    return raw


def settings_for(raw: dict[str, Any], fake: FakeSlack, **slack: Any) -> Settings:
    return Settings.model_validate({**raw, "slack": {
        "api_base_url": fake.api_url, "host": "127.0.0.1", "port": 0, "file_hosts": [fake.host], **slack}})


def one_line(error: pytest.ExceptionInfo[ConfigError]) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


# ---------------------------------------------------------------------- the bot token (auth.test)


@pytest.mark.parametrize(("wrong", "said"), [("xoxb-revoked", "token_revoked"), ("xoxb-never-was", "invalid_auth")])
async def test_a_bad_bot_token_stops_the_start_with_one_line_that_names_the_fix(raw, wrong, said):
    """auth.test at start: a revoked or unknown token is one ConfigError line (the variable, where
    Slack shows the token), before anything listens or loads, not an HTTP 500 on every event."""
    async with FakeSlack(bot_token=BOT_TOKEN) as fake:
        fake.add_workspace("T0REVOKED1", "xoxb-revoked")
        fake.revoke("xoxb-revoked")
        secrets = Secrets(slack_bot_token=wrong, slack_signing_secret=SIGNING_SECRET)
        opened = []

        @asynccontextmanager
        async def never_opened(settings: Settings, *, secrets: Secrets) -> AsyncIterator[SearchService]:
            opened.append(settings)
            raise AssertionError("the search service must not open after a bad token")
            yield  # pragma: no cover

        with pytest.raises(ConfigError) as refused:
            await asyncio.wait_for(
                serve_slack(settings_for(raw, fake), secrets, socket_mode=False, stop=asyncio.Event(),
                            on_listening=opened.append, open_service=never_opened),
                WAIT_S,
            )
        text = one_line(refused)
        assert said in text and "SLACK_BOT_TOKEN" in text and "OAuth & Permissions" in text
        assert opened == []  # it never listened, and the model never loaded
        assert [(c.method, c.token) for c in fake.calls] == [("auth.test", wrong)]  # asked once


# ---------------------------------------------------------------------- the app-level token (Socket Mode)


@pytest.mark.parametrize(("wrong", "said"), [("xapp-1-wrong", "invalid_auth"), (BOT_TOKEN, "not_allowed_token_type")])
async def test_socket_mode_with_a_bad_app_token_fails_once_with_the_fix(raw, wrong, said):
    """apps.connections.open once at start: a refused app-level token (or a bot token given as
    one) is one ConfigError line, not a Socket Mode client retrying for ever."""
    async with FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as fake:
        secrets = Secrets(slack_bot_token=BOT_TOKEN, slack_app_token=wrong)
        with pytest.raises(ConfigError) as refused:
            async with asyncio.timeout(WAIT_S):
                async with running_slack_bot(None, settings_for(raw, fake, mode="socket"), secrets, socket_mode=True):
                    pytest.fail("the bot connected with a bad app-level token")
        text = one_line(refused)
        assert said in text and "SLACK_APP_TOKEN" in text and "connections:write" in text
        assert len(fake.calls_to("apps.connections.open")) == 1


# ---------------------------------------------------------------------- Bolt's warnings


@pytest.mark.parametrize("mode", ["http", "socket"])
async def test_the_start_logs_no_token_will_be_unused_warning(raw, mode, caplog, monkeypatch):
    """With the secrets in the environment, as an operator runs it: Bolt reads SLACK_BOT_TOKEN
    from there by itself and warned at every start that it would not use it."""
    for name, value in (("SLACK_BOT_TOKEN", BOT_TOKEN), ("SLACK_SIGNING_SECRET", SIGNING_SECRET),
                        ("SLACK_APP_TOKEN", APP_TOKEN)):
        monkeypatch.setenv(name, value)
    async with FakeSlack(bot_token=BOT_TOKEN, app_token=APP_TOKEN) as fake:
        with caplog.at_level(logging.DEBUG):
            async with running_slack_bot(None, settings_for(raw, fake, mode=mode), SECRETS,
                                         socket_mode=mode == "socket") as bot:
                assert await bot.health() == (True, "connected" if mode == "socket" else "listening")
    logged = [r.getMessage() for r in caplog.records]
    assert not [m for m in logged if "unused" in m or "will be skipped" in m], logged
    assert any("Slack bot token of" in m for m in logged)  # the start was logged (it is not all muted)


# ---------------------------------------------------------------------- which secrets, which mode


def test_the_secrets_each_mode_needs_are_named_before_anything_starts():
    oauth = Settings.model_validate({"slack": {"oauth": True}})
    oauth_secrets = Secrets(slack_client_id="1.2", slack_client_secret="s", slack_signing_secret="x")
    check_secrets(oauth, oauth_secrets, socket_mode=False)  # no SLACK_BOT_TOKEN needed
    with pytest.raises(ConfigError, match="SLACK_CLIENT_SECRET"):
        check_secrets(oauth, Secrets(slack_client_id="1.2", slack_signing_secret="x"), socket_mode=False)
    with pytest.raises(ConfigError) as socket:
        check_secrets(oauth, oauth_secrets, socket_mode=True)
    assert str(socket.value) == OAUTH_NEEDS_HTTP
    # Bolt turns OAuth on by itself when it sees SLACK_CLIENT_ID and SLACK_CLIENT_SECRET.
    with pytest.raises(ConfigError) as both:
        check_secrets(Settings(), Secrets(slack_bot_token=BOT_TOKEN, slack_signing_secret="x",
                                          slack_client_id="1.2", slack_client_secret="s"), socket_mode=False)
    assert str(both.value) == CLIENT_WITHOUT_OAUTH and "SEARCH_ALL_SLACK__OAUTH" in CLIENT_WITHOUT_OAUTH
    with pytest.raises(ConfigError, match="SLACK_APP_TOKEN"):
        check_secrets(Settings(), Secrets(slack_bot_token=BOT_TOKEN), socket_mode=True)


# ---------------------------------------------------------------------- answering while the model loads


async def test_the_listener_answers_from_the_first_second_and_says_starting_up_while_loading(raw):
    """The listener opens before the search service: Slack's URL verification is echoed and a
    signed /search is told "starting up" (ephemeral) while the opening is held; released, the
    same command is answered with results."""
    gate, loading = asyncio.Event(), asyncio.Event()

    @asynccontextmanager
    async def slow_open(settings: Settings, *, secrets: Secrets) -> AsyncIterator[SearchService]:
        loading.set()
        await gate.wait()  # "the 4.8 GB download"
        async with open_search_service(settings, secrets=secrets, progress=False) as service:
            yield service

    async with FakeSlack(bot_token=BOT_TOKEN) as fake, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as http:
        settings = settings_for(raw, fake)
        loop = asyncio.get_running_loop()
        listening: asyncio.Future[SlackBot] = loop.create_future()
        ready: asyncio.Future[SlackBot] = loop.create_future()
        stop = asyncio.Event()
        task = asyncio.create_task(serve_slack(settings, SECRETS, socket_mode=False, stop=stop, open_service=slow_open,
                                               on_listening=listening.set_result, on_ready=ready.set_result))
        try:
            bot = await asyncio.wait_for(listening, WAIT_S)
            await asyncio.wait_for(loading.wait(), WAIT_S)
            url = f"http://127.0.0.1:{bot.address[1]}{EVENTS_PATH}"

            async def post(body: str, content_type: str) -> tuple[int, str]:
                headers = {"Content-Type": content_type, **signed_headers(SIGNING_SECRET, body)}
                async with http.post(url, data=body.encode(), headers=headers) as response:
                    return response.status, await response.text()

            challenge = json.dumps({"token": "legacy", "challenge": "c-3po-r2d2", "type": "url_verification"})
            status, text = await post(challenge, "application/json")
            assert status == 200 and json.loads(text) == {"challenge": "c-3po-r2d2"}

            command = command_body("a red circle", user=USER, channel=CHANNEL, response_url=fake.response_url("a"))
            assert (await post(command, FORM))[0] == 200
            mention = message_event("app_mention", "<@UBOTSEARCH> a red circle", user=USER, channel=CHANNEL,
                                    ts="1700000000.000100")
            assert (await post(json.dumps(event_payload(mention, event_id="Ev0LOADING")), "application/json"))[0] == 200
            await fake.wait_for(lambda: fake.responses and fake.calls_to("chat.postEphemeral"))
            (told,) = fake.responses
            assert told["response_type"] == "ephemeral" and "starting up" in told["text"]
            assert "try again in a minute" in told["text"]
            (ephemeral,) = fake.calls_to("chat.postEphemeral")
            assert "starting up" in ephemeral.params["text"] and ephemeral.params["user"] == USER
            assert not ready.done() and not fake.calls_to("chat.postMessage")

            gate.set()
            await asyncio.wait_for(ready, WAIT_S)
            again = command_body("a red circle", user=USER, channel=CHANNEL, response_url=fake.response_url("b"))
            assert (await post(again, FORM))[0] == 200
            (posted,) = await fake.wait_for_calls("chat.postMessage")
            expected = await bot.service.search(Query((Term("text", "a red circle"),), limit=3))
            blocks = posted.params["blocks"]
            values = [e["value"] for b in (json.loads(blocks) if isinstance(blocks, str) else blocks)
                      if b["type"] == "actions" for e in b["elements"]]
            shown = [a.row for a in map(decode_action, values) if isinstance(a, MoreLikeThis)]
            assert shown == [item.row for item in expected.items] and len(shown) == 3
            assert len(fake.responses) == 1  # nothing more was told
        finally:
            gate.set()
            stop.set()
            await asyncio.wait_for(task, WAIT_S)


async def test_a_token_revoked_after_the_start_is_answered_with_words_not_a_500(raw):
    async with FakeSlack(bot_token=BOT_TOKEN) as fake, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as http:
        async with running_slack_bot(None, settings_for(raw, fake), SECRETS, socket_mode=False) as bot:
            fake.revoke(BOT_TOKEN)
            body = command_body("a red circle", user=USER, channel=CHANNEL, response_url=fake.response_url("r"))
            headers = {"Content-Type": FORM, **signed_headers(SIGNING_SECRET, body)}
            async with http.post(f"http://127.0.0.1:{bot.address[1]}{EVENTS_PATH}", data=body.encode(),
                                 headers=headers) as response:
                assert response.status == 200
                assert await response.text() == TOKEN_REFUSED  # Slack shows it to the user
            await bot.drain()
        assert not fake.calls_to("chat.postMessage")
