"""Many workspaces: Slack's OAuth flow (Bolt's), each workspace's bot token kept in SQLite.

With `[slack] oauth = true` the app has no token of its own. A workspace admin opens
`/slack/install` (a redirect to Slack's "Allow" page, with a one-time `state` kept in the
SQLite file and a cookie in the admin's browser); Slack sends them back to
`/slack/oauth_redirect?code=..&state=..`; Bolt checks the state and trades the code with
oauth.v2.access (the app's SLACK_CLIENT_ID / SLACK_CLIENT_SECRET) for that workspace's bot
token, which `installations_path` keeps. Every request Slack signs then carries a team id, and
Bolt's authorize middleware looks up that team's token: each answer goes out with the token of
the workspace that asked. A team with no installation gets `NOT_INSTALLED`, never another
team's token.

slack_sdk's SQLite stores are synchronous (a file per call); `InThreads` runs their calls off
the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from slack_bolt.oauth.async_oauth_settings import AsyncOAuthSettings
from slack_sdk.oauth.installation_store.async_installation_store import (
    AsyncInstallationStore,
)
from slack_sdk.oauth.installation_store.models.bot import Bot
from slack_sdk.oauth.installation_store.models.installation import Installation
from slack_sdk.oauth.installation_store.sqlite3 import SQLite3InstallationStore
from slack_sdk.oauth.state_store.async_state_store import AsyncOAuthStateStore
from slack_sdk.oauth.state_store.sqlite3 import SQLite3OAuthStateStore

from core.config import Secrets, SlackSettings
from core.errors import ConfigError

log = logging.getLogger("search_all.slack")

INSTALL_PATH = "/slack/install"
REDIRECT_PATH = "/slack/oauth_redirect"
STATE_EXPIRY_S = 10 * 60  # an installer has 10 minutes between /slack/install and "Allow"
NOT_INSTALLED = (
    "Search All is not installed in this workspace (or its installation was removed): "
    f"ask an admin to install it again from the app's {INSTALL_PATH} page."
)


class InstallationsInThreads(AsyncInstallationStore):
    """slack_sdk's SQLite installation store, each call in a worker thread."""

    def __init__(self, path: Path, client_id: str):
        self._store = SQLite3InstallationStore(database=str(path), client_id=client_id, logger=log)

    @property
    def logger(self) -> logging.Logger:
        return log

    async def async_save(self, installation: Installation) -> None:
        await asyncio.to_thread(self._store.save, installation)
        log.info("Slack app installed in workspace %s (%s)", installation.team_id, installation.team_name)

    async def async_save_bot(self, bot: Bot) -> None:
        await asyncio.to_thread(self._store.save_bot, bot)

    async def async_find_bot(self, **kwargs: Any) -> Bot | None:
        return await asyncio.to_thread(lambda: self._store.find_bot(**kwargs))

    async def async_find_installation(self, **kwargs: Any) -> Installation | None:
        return await asyncio.to_thread(lambda: self._store.find_installation(**kwargs))

    async def async_delete_bot(self, **kwargs: Any) -> None:
        await asyncio.to_thread(lambda: self._store.delete_bot(**kwargs))

    async def async_delete_installation(self, **kwargs: Any) -> None:
        await asyncio.to_thread(lambda: self._store.delete_installation(**kwargs))

    async def async_delete_all(self, **kwargs: Any) -> None:
        await asyncio.to_thread(lambda: self._store.delete_all(**kwargs))


class StatesInThreads(AsyncOAuthStateStore):
    """slack_sdk's SQLite store of the one-time OAuth `state`s, each call in a worker thread."""

    def __init__(self, path: Path):
        self._store = SQLite3OAuthStateStore(database=str(path), expiration_seconds=STATE_EXPIRY_S, logger=log)

    @property
    def logger(self) -> logging.Logger:
        return log

    async def async_issue(self, *args: Any, **kwargs: Any) -> str:
        return await asyncio.to_thread(self._store.issue)

    async def async_consume(self, state: str) -> bool:
        return await asyncio.to_thread(self._store.consume, state)


def oauth_settings(settings: SlackSettings, secrets: Secrets) -> AsyncOAuthSettings:
    """Bolt's OAuth settings: install at `/slack/install` (a redirect to Slack's "Allow" page),
    back at `/slack/oauth_redirect`, installations and states in `[slack] installations_path`."""
    client_id = secrets.require("slack_client_id")
    client_secret = secrets.require("slack_client_secret")
    path = settings.installations_path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"[slack] installations_path: cannot create the folder {path.parent} ({exc.strerror}): "
            "choose a writable place for the installations file"
        ) from None
    return AsyncOAuthSettings(
        client_id=client_id,
        client_secret=client_secret,
        scopes=list(settings.scopes),
        user_scopes=[],
        redirect_uri=settings.redirect_url,
        install_path=INSTALL_PATH,
        install_page_rendering_enabled=False,  # /slack/install goes straight to Slack's page
        redirect_uri_path=REDIRECT_PATH,
        authorization_url=settings.authorize_url,
        installation_store=InstallationsInThreads(path, client_id),
        state_store=StatesInThreads(path),
        state_expiration_seconds=STATE_EXPIRY_S,
        logger=log,
    )
