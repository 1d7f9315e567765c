"""The Slack bot: `/search`, mentions and direct messages (text, images, audio clips), buttons.

Every listener is two halves, as bolt-python's lazy listeners: the ack half answers Slack at once
and hands the work half to a task the bot tracks (`drain` waits for them,
`close` cancels them), so Slack gets its answer within 3 s whatever the search costs; Bolt runs
with `process_before_response=True`, which means the ack is sent only after a listener has
handed its work over. HTTP mode (`/slack/events`, signatures checked by Bolt) and Socket Mode
end in the same listeners.

Where answers go: a slash command's results are a new message in the channel (its uploaded
images in that message's thread); a mention's or DM's results go in the thread of the message;
a button's results go in the thread of the message that carried it. Errors are told only to
the user: `chat.postEphemeral` for events and buttons, the command's `response_url` (which works
in channels the bot is not in) for slash commands.

Whose token: with one workspace (SLACK_BOT_TOKEN) every call uses that token, checked with
auth.test at start; with many (`[slack] oauth`, bot.slack.oauth) Bolt looks up, per request,
the bot token of the workspace that sent it, and the listeners answer through the request's
own client (`Conversation.client`), never the app's. The HTTP listener (or the Socket Mode
connection) opens before the search service has loaded (`attach`): Slack's Request URL check
passes during a first start, and a search meanwhile is told "starting up, try again".

Also here: events delivered again by Slack (same `event_id`, `X-Slack-Retry-Num`) are dropped;
a signed request seen already (the same `X-Slack-Signature`, within the 5 minutes a signature is
valid) is a replay by whoever saw it, acked with an empty 200 and not acted on; a request whose
`X-Slack-Request-Timestamp` is not a plausible Unix time gets 401 before Bolt reads it;
Web API calls answered 429 are retried after `Retry-After`; searches are rate-limited per user
(`[bot]`); `[slack] allowed_channels` limits where the bot answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from aiohttp import web
from slack_bolt.async_app import AsyncApp
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.common.handle import Admission, build_query, on_allow_list, user_message
from bot.common.reply import (
    Action,
    MoreLikeThis,
    ReplyImage,
    build_reply,
    decode_action,
    shorten,
)
from bot.ops import serve_ops, stop_on_signals
from bot.slack.dedupe import RecentKeys
from bot.slack.files import SlackFileFetcher
from bot.slack.memory import SlackMemory, with_memory_scopes
from bot.slack.oauth import INSTALL_PATH, NOT_INSTALLED, oauth_settings
from bot.slack.render import (
    MAX_RESULTS,
    fallback_text,
    needs_upload,
    render_blocks,
    upload_filename,
    upload_title,
)
from bot.slack.startup import (
    check_app_token,
    check_bot_token,
    check_secrets,
    no_unused_token_warning,
)
from bot.slack.text import query_text, split_limit
from core.config import Secrets, Settings
from core.errors import SearchAllError
from core.service import SearchResult, SearchService

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

log = logging.getLogger("search_all.slack")

COMMAND = "/search"
EVENTS_PATH = "/slack/events"
UPLOADS_PER_CALL = 10
# Bolt accepts a signature while its timestamp is within 5 minutes of now, either side: a
# signature may be replayed for 10 minutes at most. Remember more than that, and enough of them.
REPLAY_TTL_S = 15 * 60
REPLAY_MAX_KEYS = 100_000
# A Unix time in seconds has 10 digits until 2286; anything else is not Slack's.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
USAGE = (
    "Search the image collection: `/search a castle in the clouds`.\n"
    "• `cat + cartoon - photo`: add and subtract ideas; `sunset + 0.5*watercolor` weighs one\n"
    '• `filter:watercolor`, `-filter:"low quality"`: only prompts with (without) these words\n'
    "• `limit:8`: how many results (at most {max})\n"
    "• where channel memory is on (`/search-memory`): `source:memory`, `source:collection` or "
    "`source:both`, and `in:channel` or `in:workspace`\n"
    "Mention me or send me a direct message with an image or an audio clip to search with it."
)

Tell = Callable[[str], Awaitable[Any]]  # sends a message only the user sees


# Told when Slack refuses the one bot token while the bot runs (revoked, the app removed).
TOKEN_REFUSED = "Search All cannot use its Slack token any more (revoked, or the app was removed): tell whoever runs the bot."


class StartingUpError(SearchAllError):
    def __init__(self) -> None:
        super().__init__("Search All is starting up (loading the collection and the model): try again in a minute")


class NotInChannelError(SearchAllError):
    def __init__(self) -> None:
        super().__init__(
            "I am not a member of this channel, so I cannot post results here: invite me "
            "(`/invite @Search All`) or send me a direct message"
        )


@dataclass(frozen=True)
class Conversation:
    """Who asked, where the answer goes (`thread_ts=None`: a new top-level message), and the
    Web API client that answers (Bolt's client of the request: the bot token of that workspace)."""

    channel: str
    user: str
    team: str
    thread_ts: str | None
    client: AsyncWebClient


class ServiceOpener(Protocol):
    """`core.startup.open_search_service`, or a stand-in (tests)."""

    def __call__(self, settings: Settings, *, secrets: Secrets) -> AbstractAsyncContextManager[SearchService]: ...


class SlackBot:
    """The Bolt app and its listeners. `service` may come later (`attach`): until then every
    search is answered `StartingUpError`."""

    def __init__(
        self,
        service: SearchService | None,
        settings: Settings,
        secrets: Secrets,
        *,
        session: aiohttp.ClientSession,
        socket_mode: bool,
    ):
        self._service = service
        self.settings = settings
        oauth = settings.slack.oauth
        # The app's own client: the one token (its token is the request's, see Conversation), or
        # none with OAuth. Bolt gets the client alone: given a token too, it warns the token is unused.
        self.client = AsyncWebClient(
            token=None if oauth else secrets.require("slack_bot_token"),
            base_url=settings.slack.api_base_url,
            session=session,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(),
                AsyncRateLimitErrorRetryHandler(max_retry_count=2),
            ],
        )
        with no_unused_token_warning(log):
            self.app = AsyncApp(
                client=self.client,
                signing_secret=None if socket_mode else secrets.require("slack_signing_secret"),
                request_verification_enabled=not socket_mode,
                process_before_response=True,
                oauth_settings=oauth_settings(with_memory_scopes(settings), secrets) if oauth else None,
                user_facing_authorize_error_message=NOT_INSTALLED if oauth else TOKEN_REFUSED,
                logger=log,
            )
        self.files = SlackFileFetcher(
            session,
            hosts=settings.slack.file_hosts,
            limits=settings.limits,
            max_attachments=settings.bot.max_attachments,
        )
        self.admission = Admission(settings, per_message=MAX_RESULTS)
        self.recent_events = RecentKeys()
        self.recent_signatures = RecentKeys(REPLAY_TTL_S, REPLAY_MAX_KEYS)
        self.address: tuple[str, int] | None = None  # HTTP mode: where /slack/events listens
        self.socket_mode_client: Any = None  # Socket Mode: slack_sdk's client, while connected
        self._tasks: set[asyncio.Task[None]] = set()
        self.app.middleware(self._skip_replays)
        self.app.middleware(self._skip_repeated_events)
        self.app.command(COMMAND)(self.ack_command)
        # Channel memory (bot/slack/memory.py): before the `message` listener, which gets DMs only.
        self.memory = SlackMemory(self, session, spawn=self._spawn)
        self.memory.register(self.app, oauth=bool(oauth))
        self.app.event("app_mention")(self.ack_mention)
        self.app.event("message")(self.ack_message)
        self.app.action(re.compile(r"^sa:"))(self.ack_button)
        if oauth:  # a workspace that removes the app: its installation is deleted
            self.app.event("app_uninstalled")(self.app.default_app_uninstalled_event_listener())
            self.app.event("tokens_revoked")(self.app.default_tokens_revoked_event_listener())
        self._stop_listening: Callable[[], Awaitable[None]] | None = None
        self._shutdown: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ the search service

    def attach(self, service: SearchService) -> None:
        """The search service is ready: searches are answered from now on (and interrupted
        channel-memory backfills resumed)."""
        self._service = service
        self.memory.resume_backfills()

    @property
    def service(self) -> SearchService:
        if self._service is None:
            raise StartingUpError()
        return self._service

    @property
    def ready(self) -> bool:
        return self._service is not None

    # ------------------------------------------------------------------ tasks

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until every answer started so far has been sent (at most `timeout` seconds)."""
        try:
            async with asyncio.timeout(timeout):
                while self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
        except TimeoutError:
            log.warning("shutting down: %d answers not sent within %.0f s", len(self._tasks), timeout)

    async def health(self) -> tuple[bool, str]:
        """For /healthz: Socket Mode connected, or the HTTP listener listening."""
        if self.socket_mode_client is not None:
            up = await self.socket_mode_client.is_connected()
            return up, "connected" if up else "disconnected"
        return (True, "listening") if self.address else (False, "not listening")

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.drain()

    # ------------------------------------------------------------------ connecting, stopping

    async def listen(self, host: str, port: int, *, grace_s: float) -> None:
        """HTTP mode: serve `/slack/events` (and, with OAuth, `/slack/install` and
        `/slack/oauth_redirect`) on host:port; requests in flight at shutdown get `grace_s`."""
        runner = web.AppRunner(events_web_app(self, port), shutdown_timeout=grace_s)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self.address = runner.addresses[0][:2]

        async def stop() -> None:
            self.address = None
            await runner.cleanup()

        self._stop_listening = stop

    async def connect(self, app_token: str) -> None:
        """Socket Mode: the app-level token checked once (a refused one is a `ConfigError`,
        not a client retrying for ever), then connected."""
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

        await check_app_token(self.client, app_token)
        handler = AsyncSocketModeHandler(self.app, app_token, web_client=self.client)
        await handler.connect_async()
        self.socket_mode_client = handler.client

        async def stop() -> None:
            self.socket_mode_client = None
            await handler.close_async()

        self._stop_listening = stop

    async def shutdown(self, grace_s: float) -> None:
        """Take no new events (the listener or the socket closes first), give the answers in
        flight what is left of `grace_s` seconds, cancel the rest. Idempotent."""
        if self._shutdown is None:
            self._shutdown = asyncio.create_task(self._shut_down(grace_s))
        await self._shutdown

    async def _shut_down(self, grace_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        stop, self._stop_listening = self._stop_listening, None
        try:
            if stop is not None:
                await stop()
            await self.drain(max(0.0, deadline - loop.time()))
        finally:
            await self.close()

    # ------------------------------------------------------------------ listeners

    async def _skip_replays(self, req: Any, next: Callable[[], Awaitable[Any]]) -> Any:
        """Bolt's checks passed (custom middleware runs after them): a signature seen already is
        the same signed request again. Slack never re-sends a slash command or a button press
        (an event retry is dropped by its id anyway), so this is someone replaying a request
        they saw: an empty 200, as for a repeated event: nothing is done, nothing is told."""
        signature = (req.headers.get("x-slack-signature") or [None])[0]
        if signature and not self.recent_signatures.first_time(signature):
            log.warning("a signed request arrived again (a replay, or a retry of an event): not acted on")
            return BoltResponse(status=200, body="")
        return await next()

    async def _skip_repeated_events(self, body: dict[str, Any], next: Callable[[], Awaitable[Any]]) -> Any:
        event_id = body.get("event_id")
        if isinstance(event_id, str) and not self.recent_events.first_time(event_id):
            log.info("event %s delivered again: answered already", event_id)
            return BoltResponse(status=200, body="")
        return await next()

    # The ack halves: each answers Slack at once and hands its work half to `_spawn`.

    async def ack_command(
        self, ack: Callable[..., Awaitable[Any]], command: dict[str, Any], respond: Any, client: AsyncWebClient
    ) -> None:
        await ack()
        conversation = Conversation(command["channel_id"], command["user_id"], command.get("team_id", ""), None, client)

        async def tell(text: str) -> None:
            await respond(text=text, response_type="ephemeral", replace_original=False)

        self._spawn(self.answer_command(conversation, tell, query_text(command.get("text") or "")))

    async def ack_mention(self, event: dict[str, Any], client: AsyncWebClient) -> None:
        if event.get("channel_type") == "im":
            return  # a DM arrives as message.im too; answered there
        self._spawn(self.answer_message(event, client))

    async def ack_message(self, event: dict[str, Any], client: AsyncWebClient) -> None:
        if event.get("channel_type") != "im" or event.get("bot_id"):
            return
        if event.get("subtype") not in (None, "file_share"):
            return  # edits, deletions, joins...
        self._spawn(self.answer_message(event, client))

    async def ack_button(
        self,
        ack: Callable[..., Awaitable[Any]],
        body: dict[str, Any],
        action: dict[str, Any],
        client: AsyncWebClient,
    ) -> None:
        await ack()
        decoded = decode_action(action.get("value") or action.get("action_id") or "")
        if decoded is None:
            log.warning("unknown button %r", action.get("action_id"))
            return
        message = body.get("message") or {}
        container = body.get("container") or {}
        conversation = Conversation(
            channel=(body.get("channel") or {}).get("id") or container.get("channel_id", ""),
            user=(body.get("user") or {}).get("id", ""),
            team=(body.get("team") or {}).get("id", ""),
            thread_ts=message.get("thread_ts") or message.get("ts") or container.get("message_ts"),
            client=client,
        )
        self._spawn(self.answer_button(conversation, decoded))

    # The work halves.

    async def answer_command(self, conversation: Conversation, tell: Tell, text: str) -> None:
        if text.lower() in ("", "help"):
            await self._safely(tell(USAGE.format(max=self.admission.limit(MAX_RESULTS))))
            return
        await self._answer(conversation, tell, lambda: self._search_text(conversation, text))

    async def answer_message(self, event: Mapping[str, Any], client: AsyncWebClient) -> None:
        conversation = Conversation(
            channel=event["channel"],
            user=event.get("user", ""),
            team=event.get("team", ""),
            thread_ts=event.get("thread_ts") or event["ts"],
            client=client,
        )
        await self._answer(
            conversation, self._ephemeral(conversation), lambda: self._search_message(conversation, event)
        )

    async def answer_button(self, conversation: Conversation, action: Action) -> None:
        limit = self.admission.limit(None) if isinstance(action, MoreLikeThis) else None
        await self._answer(conversation, self._ephemeral(conversation), lambda: self.memory.run_button(conversation, action, limit))

    # ------------------------------------------------------------------ work

    async def _answer(
        self, conversation: Conversation, tell: Tell, search: Callable[[], Awaitable[SearchResult]]
    ) -> None:
        try:
            if not self.ready:  # before the rate limit: a try while starting up costs nothing
                raise StartingUpError()
            self.admission.admit(
                f"{conversation.team}:{conversation.user}",
                on_allow_list(self.settings.slack.allowed_channels, conversation.channel),
            )
            await self._post_result(conversation, await search())
        except Exception as exc:  # every failure is told to the user, unexpected ones logged
            await self._safely(tell(user_message(exc)))

    async def _safely(self, message: Awaitable[Any]) -> None:
        try:
            await message
        except Exception:
            log.exception("could not send a message to the user")

    def _ephemeral(self, conversation: Conversation) -> Tell:
        async def tell(text: str) -> None:
            await conversation.client.chat_postEphemeral(
                channel=conversation.channel,
                user=conversation.user,
                text=text,
                thread_ts=conversation.thread_ts,
            )

        return tell

    async def _search_text(self, conversation: Conversation, text: str) -> SearchResult:
        text, scope = await self.memory.read_scope(conversation, text)
        text, asked = split_limit(text)
        size = self.admission.page_size(asked)
        query = build_query(text, [], limits=self.settings.limits, limit=size.value)
        return size.told(await self.service.search(query, scope))

    async def _search_message(self, conversation: Conversation, event: Mapping[str, Any]) -> SearchResult:
        service = self.service  # starting up: said before any file is downloaded
        text, scope = await self.memory.read_scope(conversation, query_text(event.get("text") or ""))
        text, asked = split_limit(text)
        size = self.admission.page_size(asked)
        client = conversation.client

        async def file_info(file_id: str) -> Mapping[str, Any]:
            return (await client.files_info(file=file_id))["file"]

        attachments = await self.files.attachments(
            event.get("files") or [], token=client.token or "", file_info=file_info
        )
        query = build_query(text, attachments, limits=self.settings.limits, limit=size.value)
        return size.told(await service.search(query, scope))

    async def _post_result(self, conversation: Conversation, result: SearchResult) -> None:
        reply = build_reply(result, caption_chars=self.settings.bot.caption_chars)
        top_level = conversation.thread_ts is None
        try:
            posted = await conversation.client.chat_postMessage(
                channel=conversation.channel,
                thread_ts=conversation.thread_ts,
                text=fallback_text(reply),
                blocks=render_blocks(reply, requested_by=conversation.user if top_level else None),
                unfurl_links=False,
                unfurl_media=False,
            )
        except SlackApiError as exc:
            if exc.response.get("error") in ("not_in_channel", "channel_not_found"):
                raise NotInChannelError() from exc
            raise
        uploads = [image for image in reply.images[:MAX_RESULTS] if needs_upload(image)]
        if uploads:
            await self._share_images(conversation, conversation.thread_ts or posted["ts"], uploads)

    async def _share_images(self, conversation: Conversation, thread_ts: str, images: list[ReplyImage]) -> None:
        """Upload the dataset's JPEGs of `images` and share them in the thread (see bot.slack.render)."""
        jpegs = await asyncio.gather(*(self.service.image_bytes(image.item) for image in images))
        files = [
            {
                "content": jpeg,
                "filename": upload_filename(image),
                "title": upload_title(image),
                "alt_txt": shorten(image.caption, 1000) or upload_title(image),
            }
            for image, jpeg in zip(images, jpegs, strict=True)
            if jpeg
        ]
        for start in range(0, len(files), UPLOADS_PER_CALL):
            await conversation.client.files_upload_v2(
                channel=conversation.channel, thread_ts=thread_ts, file_uploads=files[start : start + UPLOADS_PER_CALL]
            )


# ---------------------------------------------------------------------- running


@web.middleware
async def refuse_bad_timestamps(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """401 for an `X-Slack-Request-Timestamp` that is not a Unix time: Bolt's check would
    fail on it with a 500 and a traceback ("abc": int() fails; 400 digits: no float holds it).
    A missing one is left to Bolt, which refuses it."""
    timestamp = request.headers.get("X-Slack-Request-Timestamp")
    if timestamp is not None and not _TIMESTAMP.fullmatch(timestamp.strip()):
        log.info("refused a request with the timestamp %r", timestamp[:40])
        return web.json_response({"error": "invalid request"}, status=401)
    return await handler(request)


def events_web_app(bot: SlackBot, port: int) -> web.Application:
    """Bolt's aiohttp app for `/slack/events`, behind `refuse_bad_timestamps`."""
    app = bot.app.web_app(path=EVENTS_PATH, port=port)
    app.middlewares.append(refuse_bad_timestamps)
    return app


@contextlib.asynccontextmanager
async def running_slack_bot(
    service: SearchService | None, settings: Settings, secrets: Secrets, *, socket_mode: bool
) -> AsyncIterator[SlackBot]:
    """The bot connected (Socket Mode) or listening on `[slack] host/port` (HTTP) until exit,
    its bot token checked first (one workspace); `service` may be None and `attach`ed later.
    On exit it takes no new events (the socket or listener closes first) and gets `[ops]
    shutdown_grace_seconds` to send the answers in flight before the rest is cancelled."""
    check_secrets(settings, secrets, socket_mode=socket_mode)
    grace_s = settings.ops.shutdown_grace_seconds
    async with aiohttp.ClientSession() as session:
        bot = SlackBot(service, settings, secrets, session=session, socket_mode=socket_mode)
        try:
            if not settings.slack.oauth:
                me = await check_bot_token(bot.client)
                log.info("Slack bot token of %s in workspace %s (%s)", me.get("user"), me.get("team"), me.get("team_id"))
            if socket_mode:
                await bot.connect(secrets.require("slack_app_token"))
            else:
                await bot.listen(settings.slack.host, settings.slack.port, grace_s=grace_s)
            yield bot
        finally:
            await bot.shutdown(grace_s)


def where(bot: SlackBot) -> str:
    """Where the bot takes events, for the start-up lines."""
    if bot.address is None:
        return "connected with Socket Mode"
    host, port = bot.address
    shown = f"listening on http://{host}:{port}{EVENTS_PATH}"
    if bot.settings.slack.oauth:
        redirect = bot.settings.slack.redirect_url
        origin = redirect.split("/slack/", 1)[0] if redirect else f"http://{host}:{port}"
        shown += f", workspaces install it at {origin}{INSTALL_PATH}"
    return shown


async def serve_slack(
    settings: Settings,
    secrets: Secrets,
    *,
    socket_mode: bool,
    stop: asyncio.Event,
    on_ready: Callable[[SlackBot], None] | None = None,
    on_listening: Callable[[SlackBot], None] | None = None,
    open_service: ServiceOpener | None = None,
) -> None:
    """Run the bot until `stop` is set. It listens (or connects) first, then opens the search
    service (`open_service`, by default `core.startup.open_search_service`): Slack's URL check
    and signed requests are answered meanwhile, searches with "starting up". /healthz and
    /metrics are served on `[ops] health_host:health_port` (0: not served) once the service is
    open. `on_listening` gets the bot as soon as it listens (in HTTP mode, `bot.address` is
    where), `on_ready` once it searches."""
    if open_service is None:
        from core.startup import open_search_service as open_service
    grace_s = settings.ops.shutdown_grace_seconds
    async with running_slack_bot(None, settings, secrets, socket_mode=socket_mode) as bot:
        print(f"Search All Slack bot: {where(bot)}; loading the collection and the model", flush=True)
        if on_listening is not None:
            on_listening(bot)
        async with open_service(settings, secrets=secrets) as service:
            bot.attach(service)
            try:
                async with serve_ops(service, settings.ops.health_host, settings.ops.health_port,
                                     {"slack": bot.health}):
                    print(f"Search All Slack bot: ready, {where(bot)} (Ctrl+C stops)", flush=True)
                    if on_ready is not None:
                        on_ready(bot)
                    await stop.wait()
            finally:
                await bot.shutdown(grace_s)  # the answers in flight, while the service is open


def wants_socket_mode(settings: Settings, flag: bool) -> bool:
    """Socket Mode when asked on the command line (`--socket-mode`) or by `[slack] mode`."""
    return flag or settings.slack.mode == "socket"


def run_slack(settings: Settings, secrets: Secrets, *, socket_mode: bool) -> None:
    """`search-all bot slack`: runs until interrupted (Ctrl-C or SIGTERM)."""
    socket_mode = wants_socket_mode(settings, socket_mode)
    check_secrets(settings, secrets, socket_mode=socket_mode)  # fail fast, before anything opens

    async def main() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await serve_slack(settings, secrets, socket_mode=socket_mode, stop=stop)

    asyncio.run(main())
