"""The Slack app's set-up, checked at start: which secrets each mode needs, and whether Slack
takes the tokens. Each mistake is one `ConfigError` line that names the fix, before the model
loads, instead of an HTTP 500 on every event (a bad bot token) or a Socket Mode client that
retries for ever (a bad app-level token).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterator

import aiohttp
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse

from core.config import Secrets, Settings
from core.errors import ConfigError

CHECK_TIMEOUT_S = 30.0
BAD_BOT_TOKEN = (
    "Slack refused the bot token in SLACK_BOT_TOKEN ({error}): copy the Bot User OAuth Token "
    "(xoxb-...) again from api.slack.com/apps > your app > OAuth & Permissions (reinstall the "
    "app to the workspace if it was removed or its token revoked)"
)
BAD_APP_TOKEN = (
    "Slack refused the app-level token in SLACK_APP_TOKEN ({error}): Socket Mode needs an "
    "xapp-... token with the connections:write scope, made at api.slack.com/apps > your app > "
    "Basic Information > App-Level Tokens, with Socket Mode turned on (Settings > Socket Mode)"
)
UNREACHABLE = "could not reach Slack's Web API at {url} ({error}): check the network and [slack] api_base_url"
OAUTH_NEEDS_HTTP = (
    '[slack] oauth = true needs mode = "http": Slack sends installers back to this app\'s '
    "/slack/oauth_redirect, and Socket Mode apps serve one workspace (SLACK_BOT_TOKEN, oauth = false)"
)
CLIENT_WITHOUT_OAUTH = (
    "SLACK_CLIENT_ID and SLACK_CLIENT_SECRET are set but [slack] oauth is false (Bolt would "
    "switch to its OAuth flow on its own and ignore SLACK_BOT_TOKEN): set [slack] oauth = true "
    "(SEARCH_ALL_SLACK__OAUTH=true) to serve many workspaces, or unset the two variables"
)


def check_secrets(settings: Settings, secrets: Secrets, *, socket_mode: bool) -> None:
    """The secrets and modes fit together (no network): one token (SLACK_BOT_TOKEN, plus
    SLACK_SIGNING_SECRET over HTTP or SLACK_APP_TOKEN with Socket Mode), or OAuth
    (SLACK_CLIENT_ID, SLACK_CLIENT_SECRET, SLACK_SIGNING_SECRET, HTTP only)."""
    if settings.slack.oauth:
        if socket_mode:
            raise ConfigError(OAUTH_NEEDS_HTTP)
        for name in ("slack_client_id", "slack_client_secret", "slack_signing_secret"):
            secrets.require(name)
        return
    if secrets.slack_client_id and secrets.slack_client_secret:
        raise ConfigError(CLIENT_WITHOUT_OAUTH)
    secrets.require("slack_bot_token")
    secrets.require("slack_app_token" if socket_mode else "slack_signing_secret")


async def check_bot_token(client: AsyncWebClient) -> AsyncSlackResponse:
    """auth.test with the client's token: who the bot is, or `BAD_BOT_TOKEN`."""
    return await _checked(client.auth_test(), client, BAD_BOT_TOKEN)


async def check_app_token(client: AsyncWebClient, app_token: str) -> None:
    """apps.connections.open once with the app-level token, or `BAD_APP_TOKEN` (the Socket Mode
    client would otherwise retry a refused token for ever)."""
    await _checked(client.apps_connections_open(app_token=app_token), client, BAD_APP_TOKEN)


async def _checked(call: Awaitable[AsyncSlackResponse], client: AsyncWebClient, refused: str) -> AsyncSlackResponse:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            return await call
    except SlackApiError as exc:
        raise ConfigError(refused.format(error=exc.response.get("error", "refused"))) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = str(exc) or type(exc).__name__
        raise ConfigError(UNREACHABLE.format(url=client.base_url, error=error)) from None


@contextlib.contextmanager
def no_unused_token_warning(logger: logging.Logger) -> Iterator[None]:
    """While Bolt's app is built: Bolt reads SLACK_BOT_TOKEN from the environment by itself, even
    when it is given a client, and then logs "As you gave `client` as well, `token` will be
    unused" at every start. The client is how the token is given (with the API base URL, the
    session and the retries), so that one line, and only it, is dropped."""
    noise = warning_client_prioritized_and_token_skipped()

    def keep(record: logging.LogRecord) -> bool:
        return record.getMessage() != noise

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)
