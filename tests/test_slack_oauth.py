"""Slack's OAuth flow (many workspaces): install -> Slack's "Allow" page -> redirect ->
oauth.v2.access -> the installation kept in SQLite -> each workspace's events answered with
that workspace's own bot token, never another's; a workspace without an installation is told so.

The real Bolt app in HTTP mode against the local Slack server (tests/fakes/slack.py), whose
authorize page stands in for slack.com's; the test follows the redirects as a browser does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from slack_sdk.oauth.installation_store.sqlite3 import SQLite3InstallationStore

from bot.slack.app import EVENTS_PATH, SlackBot, running_slack_bot
from bot.slack.oauth import INSTALL_PATH, NOT_INSTALLED, REDIRECT_PATH
from core.config import SLACK_BOT_SCOPES, Secrets, Settings
from core.startup import open_search_service
from ingest.runner import run_ingest
from tests.fakes.slack import (
    CLIENT_ID,
    CLIENT_SECRET,
    WAIT_S,
    FakeSlack,
    command_body,
    event_payload,
    message_event,
    signed_headers,
)
from tests.media_factory import picture_folder

SIGNING_SECRET = "oauth-signing-secret"
SECRETS = Secrets(slack_signing_secret=SIGNING_SECRET, slack_client_id=CLIENT_ID, slack_client_secret=CLIENT_SECRET)
FORM = "application/x-www-form-urlencoded"
TEAM_A, TEAM_B, NOT_INSTALLED_TEAM = "T0AAAAAAA1", "T0BBBBBBB2", "T0NOTINST3"
CHANNEL = {TEAM_A: "C0AAAAAAA1", TEAM_B: "C0BBBBBBB2", NOT_INSTALLED_TEAM: "C0NOTINST3"}
USER = {TEAM_A: "U0AAAAAAA1", TEAM_B: "U0BBBBBBB2", NOT_INSTALLED_TEAM: "U0NOTINST3"}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("slack-oauth")
    raw = {
        "model": {"name": "tiny", "cache_dir": str(root / "cache")},
        "store": {"dataset": str(root / "dataset")},
        "search": {"collapse_cosine": 1.0, "default_limit": 3},
        "speech": {"engine": "none"},
        "ops": {"refresh_seconds": 0, "health_port": 0},
    }
    report = run_ingest(Settings.model_validate(raw), f"folder:{picture_folder(root / 'pictures', 6)}",
                        secrets=Secrets(), workers=0, progress=False)
    assert report.summary.added == 6
    return raw


@dataclass
class App:
    fake: FakeSlack
    bot: SlackBot
    installations: Path
    browser: aiohttp.ClientSession  # the installer's browser

    @property
    def base(self) -> str:
        assert self.bot.address is not None
        return f"http://127.0.0.1:{self.bot.address[1]}"

    async def install(self, team: str) -> str:
        """An admin of `team` installs the app; returns the bot token Slack gave that workspace."""
        self.fake.approve_next(team)
        async with self.browser.get(self.base + INSTALL_PATH, allow_redirects=False) as response:
            assert response.status == 302
            authorize = response.headers["Location"]
            # The state cookie is `Secure` (a browser keeps it for https only; here it is http).
            cookie = "; ".join(f"{name}={morsel.value}" for name, morsel in response.cookies.items())
        asked = parse_qs(urlsplit(authorize).query)
        assert authorize.startswith(self.fake.authorize_url + "?")
        assert asked["client_id"] == [CLIENT_ID] and asked["scope"] == [",".join(SLACK_BOT_SCOPES)]
        async with self.browser.get(authorize, allow_redirects=False) as response:  # "Allow"
            assert response.status == 302
            back = response.headers["Location"]
        assert back.startswith(self.base + REDIRECT_PATH + "?")
        assert parse_qs(urlsplit(back).query)["state"] == asked["state"]
        async with self.browser.get(back, headers={"Cookie": cookie}) as response:
            assert response.status == 200, await response.text()
        (token,) = self.fake.token_of(team)
        return token

    async def post(self, body: str, content_type: str) -> aiohttp.ClientResponse:
        headers = {"Content-Type": content_type, **signed_headers(SIGNING_SECRET, body)}
        async with self.browser.post(self.base + EVENTS_PATH, data=body.encode(), headers=headers) as response:
            await response.read()
            return response

    async def command(self, team: str, text: str) -> int:
        body = command_body(text, user=USER[team], channel=CHANNEL[team], team=team,
                            response_url=self.fake.response_url(team))
        return (await self.post(body, FORM)).status

    async def mention(self, team: str, text: str, event_id: str) -> int:
        event = message_event("app_mention", f"<@UBOTSEARCH> {text}", user=USER[team], channel=CHANNEL[team],
                              ts="1700000000.000100", team=team)
        return (await self.post(json.dumps(event_payload(event, event_id=event_id, team=team)),
                                "application/json")).status


@asynccontextmanager
async def oauth_app(raw: dict[str, Any], tmp_path: Path) -> AsyncIterator[App]:
    installations = tmp_path / "state" / "slack-installations.sqlite"  # its folder is made
    async with FakeSlack(bot_token="xoxb-of-no-one-here") as fake:
        settings = Settings.model_validate({**raw, "slack": {
            "api_base_url": fake.api_url, "host": "127.0.0.1", "port": 0, "file_hosts": [fake.host],
            "oauth": True, "installations_path": str(installations), "authorize_url": fake.authorize_url}})
        async with open_search_service(settings, secrets=SECRETS, progress=False) as service, \
                running_slack_bot(service, settings, SECRETS, socket_mode=False) as bot, \
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as browser:
            app = App(fake, bot, installations, browser)
            fake.redirect_url = app.base + REDIRECT_PATH  # the Redirect URL of the app's settings
            yield app


async def test_two_workspaces_install_and_each_is_answered_with_its_own_token(raw, tmp_path):
    async with oauth_app(raw, tmp_path) as app:
        token_a = await app.install(TEAM_A)
        token_b = await app.install(TEAM_B)
        assert token_a != token_b
        # Kept in the SQLite file of [slack] installations_path.
        store = SQLite3InstallationStore(database=str(app.installations), client_id=CLIENT_ID)
        for team, token in ((TEAM_A, token_a), (TEAM_B, token_b)):
            kept = store.find_installation(enterprise_id=None, team_id=team)
            assert kept is not None and kept.bot_token == token and kept.team_id == team
        exchanges = app.fake.calls_to("oauth.v2.access")  # with the client id and secret, no token
        assert len(exchanges) == 2 and all(c.params["client_id"] == CLIENT_ID and c.token is None for c in exchanges)

        # Each workspace's /search and mention, answered with that workspace's token.
        assert await app.command(TEAM_A, "a red circle") == 200
        assert await app.mention(TEAM_B, "a blue square", "Ev0TEAMB001") == 200
        await app.fake.wait_for_calls("chat.postMessage", 2)
        assert await app.command(TEAM_B, "a green triangle") == 200
        assert await app.mention(TEAM_A, "a yellow star", "Ev0TEAMA001") == 200
        posted = await app.fake.wait_for_calls("chat.postMessage", 4)
        await app.bot.drain()
        assert sorted((call.params["channel"], call.token) for call in posted) == sorted(
            [(CHANNEL[TEAM_A], token_a)] * 2 + [(CHANNEL[TEAM_B], token_b)] * 2)
        # No call of one workspace ever carried the other's token (nor the fake's own).
        for call in app.fake.calls:
            channel = call.params.get("channel") or call.params.get("channel_id")
            if channel == CHANNEL[TEAM_A]:
                assert call.token == token_a, call
            elif channel == CHANNEL[TEAM_B]:
                assert call.token == token_b, call
        assert {call.token for call in app.fake.calls} <= {token_a, token_b, None}
        assert app.fake.responses == []  # no errors told


async def test_a_workspace_without_an_installation_is_told_so_and_nothing_is_called(raw, tmp_path):
    async with oauth_app(raw, tmp_path) as app:
        token_a = await app.install(TEAM_A)
        before = len(app.fake.calls)
        assert await app.command(NOT_INSTALLED_TEAM, "a red circle") == 200
        await app.fake.wait_for(lambda: bool(app.fake.responses))
        (told,) = app.fake.responses
        assert told["text"] == NOT_INSTALLED and told["_url_id"] == NOT_INSTALLED_TEAM
        assert await app.mention(NOT_INSTALLED_TEAM, "a red circle", "Ev0NOTINST1") == 200
        await app.bot.drain()
        assert app.fake.calls[before:] == []  # no token of anyone was used for it
        # A redirect replayed (the state used already) is refused with a 4xx, not run again.
        app.fake.approve_next(TEAM_B)
        async with app.browser.get(app.base + REDIRECT_PATH + "?code=stolen&state=made-up") as response:
            assert 400 <= response.status < 500
        assert len(app.fake.calls_to("oauth.v2.access")) == 1 and app.fake.token_of(TEAM_B) == []
        assert await app.command(TEAM_A, "a red circle") == 200  # the installed one still works
        (posted,) = await app.fake.wait_for_calls("chat.postMessage")
        assert posted.token == token_a


async def test_a_workspace_that_uninstalls_the_app_has_its_installation_deleted(raw, tmp_path):
    """`app_uninstalled` (a bot event to subscribe to, docs/slack.md): the workspace's tokens
    leave the SQLite file; its next request is told to install again, the other's still works."""
    async with oauth_app(raw, tmp_path) as app:
        await app.install(TEAM_A)
        token_b = await app.install(TEAM_B)
        uninstalled = event_payload({"type": "app_uninstalled", "event_ts": "1700000000.000200"},
                                    event_id="Ev0UNINST01", team=TEAM_A)
        assert (await app.post(json.dumps(uninstalled), "application/json")).status == 200
        await app.bot.drain()
        store = SQLite3InstallationStore(database=str(app.installations), client_id=CLIENT_ID)
        assert store.find_installation(enterprise_id=None, team_id=TEAM_A) is None
        assert store.find_installation(enterprise_id=None, team_id=TEAM_B) is not None
        assert await app.command(TEAM_A, "a red circle") == 200
        await app.fake.wait_for(lambda: bool(app.fake.responses))
        assert [r["text"] for r in app.fake.responses] == [NOT_INSTALLED]
        assert await app.command(TEAM_B, "a red circle") == 200
        (posted,) = await app.fake.wait_for_calls("chat.postMessage")
        assert posted.token == token_b
