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
from typing import Any

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
from bot.common.reply import Action, MoreLikeThis, ReplyImage, build_reply, decode_action, run_action, shorten
from bot.ops import serve_ops, stop_on_signals
from bot.slack.dedupe import RecentKeys
from bot.slack.files import SlackFileFetcher
from bot.slack.render import (
    MAX_RESULTS,
    fallback_text,
    needs_upload,
    render_blocks,
    upload_filename,
    upload_title,
)
from bot.slack.text import query_text, split_limit
from core.config import Secrets, Settings
from core.errors import SearchAllError
from core.service import SearchResult, SearchService

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
    "Mention me or send me a direct message with an image or an audio clip to search with it."
)

Tell = Callable[[str], Awaitable[Any]]  # sends a message only the user sees


class NotInChannelError(SearchAllError):
    def __init__(self) -> None:
        super().__init__(
            "I am not a member of this channel, so I cannot post results here: invite me "
            "(`/invite @Search All`) or send me a direct message"
        )


@dataclass(frozen=True)
class Conversation:
    """Who asked, and where the answer goes (`thread_ts=None`: a new top-level message)."""

    channel: str
    user: str
    team: str
    thread_ts: str | None


class SlackBot:
    def __init__(
        self,
        service: SearchService,
        settings: Settings,
        secrets: Secrets,
        *,
        session: aiohttp.ClientSession,
        socket_mode: bool,
    ):
        self.service = service
        self.settings = settings
        token = secrets.require("slack_bot_token")
        self.client = AsyncWebClient(
            token=token,
            base_url=settings.slack.api_base_url,
            session=session,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(),
                AsyncRateLimitErrorRetryHandler(max_retry_count=2),
            ],
        )
        self.app = AsyncApp(
            client=self.client,
            signing_secret=None if socket_mode else secrets.require("slack_signing_secret"),
            request_verification_enabled=not socket_mode,
            process_before_response=True,
            logger=log,
        )
        self.files = SlackFileFetcher(
            session,
            token=token,
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
        self.app.event("app_mention")(self.ack_mention)
        self.app.event("message")(self.ack_message)
        self.app.action(re.compile(r"^sa:"))(self.ack_button)

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

    async def ack_command(self, ack: Callable[..., Awaitable[Any]], command: dict[str, Any], respond: Any) -> None:
        await ack()
        conversation = Conversation(command["channel_id"], command["user_id"], command.get("team_id", ""), None)

        async def tell(text: str) -> None:
            await respond(text=text, response_type="ephemeral", replace_original=False)

        self._spawn(self.answer_command(conversation, tell, query_text(command.get("text") or "")))

    async def ack_mention(self, event: dict[str, Any]) -> None:
        if event.get("channel_type") == "im":
            return  # a DM arrives as message.im too; answered there
        self._spawn(self.answer_message(event))

    async def ack_message(self, event: dict[str, Any]) -> None:
        if event.get("channel_type") != "im" or event.get("bot_id"):
            return
        if event.get("subtype") not in (None, "file_share"):
            return  # edits, deletions, joins...
        self._spawn(self.answer_message(event))

    async def ack_button(
        self, ack: Callable[..., Awaitable[Any]], body: dict[str, Any], action: dict[str, Any]
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
        )
        self._spawn(self.answer_button(conversation, decoded))

    # The work halves.

    async def answer_command(self, conversation: Conversation, tell: Tell, text: str) -> None:
        if text.lower() in ("", "help"):
            await self._safely(tell(USAGE.format(max=self.admission.limit(MAX_RESULTS))))
            return
        await self._answer(conversation, tell, lambda: self._search_text(text))

    async def answer_message(self, event: Mapping[str, Any]) -> None:
        conversation = Conversation(
            channel=event["channel"],
            user=event.get("user", ""),
            team=event.get("team", ""),
            thread_ts=event.get("thread_ts") or event["ts"],
        )
        await self._answer(conversation, self._ephemeral(conversation), lambda: self._search_message(event))

    async def answer_button(self, conversation: Conversation, action: Action) -> None:
        limit = self.admission.limit(None) if isinstance(action, MoreLikeThis) else None
        await self._answer(conversation, self._ephemeral(conversation), lambda: run_action(self.service, action, limit))

    # ------------------------------------------------------------------ work

    async def _answer(
        self, conversation: Conversation, tell: Tell, search: Callable[[], Awaitable[SearchResult]]
    ) -> None:
        try:
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
            await self.client.chat_postEphemeral(
                channel=conversation.channel,
                user=conversation.user,
                text=text,
                thread_ts=conversation.thread_ts,
            )

        return tell

    async def _search_text(self, text: str) -> SearchResult:
        text, asked = split_limit(text)
        size = self.admission.page_size(asked)
        query = build_query(text, [], limits=self.settings.limits, limit=size.value)
        return size.told(await self.service.search(query))

    async def _search_message(self, event: Mapping[str, Any]) -> SearchResult:
        text, asked = split_limit(query_text(event.get("text") or ""))
        size = self.admission.page_size(asked)
        attachments = await self.files.attachments(event.get("files") or [], file_info=self._file_info)
        query = build_query(text, attachments, limits=self.settings.limits, limit=size.value)
        return size.told(await self.service.search(query))

    async def _file_info(self, file_id: str) -> Mapping[str, Any]:
        response = await self.client.files_info(file=file_id)
        return response["file"]

    async def _post_result(self, conversation: Conversation, result: SearchResult) -> None:
        reply = build_reply(result, caption_chars=self.settings.bot.caption_chars)
        top_level = conversation.thread_ts is None
        try:
            posted = await self.client.chat_postMessage(
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
            await self._share_images(conversation.channel, conversation.thread_ts or posted["ts"], uploads)

    async def _share_images(self, channel: str, thread_ts: str, images: list[ReplyImage]) -> None:
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
            await self.client.files_upload_v2(
                channel=channel, thread_ts=thread_ts, file_uploads=files[start : start + UPLOADS_PER_CALL]
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
    service: SearchService, settings: Settings, secrets: Secrets, *, socket_mode: bool
) -> AsyncIterator[SlackBot]:
    """The bot connected (Socket Mode) or listening on `[slack] host/port` (HTTP) until exit;
    then it takes no new events (the socket or listener closes first) and gets `[ops]
    shutdown_grace_seconds` to send the answers in flight before the rest is cancelled."""
    async with aiohttp.ClientSession() as session:
        bot = SlackBot(service, settings, secrets, session=session, socket_mode=socket_mode)
        try:
            if socket_mode:
                from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

                handler = AsyncSocketModeHandler(
                    bot.app, secrets.require("slack_app_token"), web_client=bot.client
                )
                await handler.connect_async()
                bot.socket_mode_client = handler.client
                try:
                    yield bot
                finally:
                    await handler.close_async()
            else:
                runner = web.AppRunner(events_web_app(bot, settings.slack.port))
                await runner.setup()
                try:
                    await web.TCPSite(runner, settings.slack.host, settings.slack.port).start()
                    host, port = runner.addresses[0][:2]
                    bot.address = (host, port)
                    yield bot
                finally:
                    await runner.cleanup()
                    bot.address = None
            await bot.drain(settings.ops.shutdown_grace_seconds)
        finally:
            await bot.close()


async def serve_slack(
    settings: Settings,
    secrets: Secrets,
    *,
    socket_mode: bool,
    stop: asyncio.Event,
    on_ready: Callable[[SlackBot], None] | None = None,
) -> None:
    """Open the search service, run the bot until `stop` is set; /healthz and /metrics are served
    on `[ops] health_host:health_port` (0: not served) once the bot listens or is connected.
    `on_ready` gets the bot then (in HTTP mode, `bot.address` is where it listens)."""
    from core.startup import open_search_service

    async with open_search_service(settings, secrets=secrets) as service:
        async with running_slack_bot(service, settings, secrets, socket_mode=socket_mode) as bot:
            async with serve_ops(service, settings.ops.health_host, settings.ops.health_port,
                                 {"slack": bot.health}):
                if bot.address:
                    where = f"listening on http://{bot.address[0]}:{bot.address[1]}{EVENTS_PATH}"
                else:
                    where = "connected with Socket Mode"
                print(f"Search All Slack bot: {where} (Ctrl+C stops)", flush=True)
                if on_ready is not None:
                    on_ready(bot)
                await stop.wait()


def wants_socket_mode(settings: Settings, flag: bool) -> bool:
    """Socket Mode when asked on the command line (`--socket-mode`) or by `[slack] mode`."""
    return flag or settings.slack.mode == "socket"


def run_slack(settings: Settings, secrets: Secrets, *, socket_mode: bool) -> None:
    """`search-all bot slack`: runs until interrupted (Ctrl-C or SIGTERM)."""
    socket_mode = wants_socket_mode(settings, socket_mode)
    secrets.require("slack_bot_token")  # before the model loads: fail fast
    secrets.require("slack_app_token" if socket_mode else "slack_signing_secret")

    async def main() -> None:
        stop = asyncio.Event()
        with stop_on_signals(stop):
            await serve_slack(settings, secrets, socket_mode=socket_mode, stop=stop)

    asyncio.run(main())
