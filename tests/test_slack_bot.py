"""The Slack bot end to end: the real Bolt app, over HTTP and Socket Mode, against a local
Slack-compatible server (tests/fakes/slack.py), searching a tiny-model dataset built here.

Expectations are computed with the same SearchService the bot uses; assertions are on the Web
API calls the fake recorded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.common.reply import MoreLikeThis, NextPage, decode_action
from bot.slack.app import EVENTS_PATH, SlackBot, running_slack_bot, serve_slack, wants_socket_mode
from core.config import Secrets, Settings
from core.query import Query, Term
from core.service import SearchService
from core.startup import open_search_service
from ingest.runner import run_ingest
from tests.bad_inputs import malformed, says
from tests.fakes.slack import (
    WAIT_S,
    FakeSlack,
    RecordingHost,
    button_body,
    command_body,
    command_payload,
    event_payload,
    message_event,
    signed_headers,
)
from tests.media_factory import make_audio, make_picture, picture_folder

BOT_TOKEN = "xoxb-test-token"
SIGNING_SECRET = "test-signing-secret"
SECRETS = Secrets(
    slack_bot_token=BOT_TOKEN, slack_signing_secret=SIGNING_SECRET, slack_app_token="xapp-1-test"
)
USER = "U0USER0001"
CHANNEL = "C0CHAN0001"
DM = "D0DIRECT01"
FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    return picture_folder(tmp_path_factory.mktemp("slack-pictures"), 12)


@pytest.fixture(scope="module")
def base_settings(tmp_path_factory, pictures) -> dict[str, Any]:
    """Settings (as a dict, completed per test with the fake's address) over a built dataset."""
    work = tmp_path_factory.mktemp("slack-dataset")
    raw = {
        "model": {"name": "tiny"},
        "store": {"dataset": str(work / "pictures")},
        "search": {"collapse_cosine": 1.0, "page_memory_path": str(work / "pages.sqlite")},
    }
    report = run_ingest(Settings.model_validate(raw), f"folder:{pictures}", workers=0, progress=False)
    assert report.summary.added == 12
    return raw


@dataclass
class Harness:
    fake: FakeSlack
    bot: SlackBot
    service: SearchService
    settings: Settings
    http: aiohttp.ClientSession

    @property
    def url(self) -> str:
        assert self.bot.address is not None
        return f"http://127.0.0.1:{self.bot.address[1]}{EVENTS_PATH}"

    async def post(
        self, body: str, content_type: str, *, secret: str = SIGNING_SECRET, **headers: Any
    ) -> int:
        sent = {"Content-Type": content_type, **signed_headers(secret, body, **headers)}
        async with self.http.post(self.url, data=body.encode(), headers=sent) as response:
            return response.status

    async def command(self, text: str, *, channel: str = CHANNEL, user: str = USER) -> int:
        body = command_body(text, user=user, channel=channel, response_url=self.fake.response_url("cmd"))
        return await self.post(body, FORM)

    async def event(self, event: dict[str, Any], event_id: str, **headers: Any) -> int:
        return await self.post(
            json.dumps(event_payload(event, event_id=event_id)), "application/json", **headers
        )

    async def button(self, value: str, *, message_ts: str) -> int:
        return await self.post(button_body(value, user=USER, channel=CHANNEL, message_ts=message_ts), FORM)


def make_settings(
    raw: dict[str, Any], fake: FakeSlack, *, bot: dict[str, Any] | None = None, **slack: Any
) -> Settings:
    """`raw` pointed at `fake`: its Web API, its file host, HTTP on 127.0.0.1 (any free port)."""
    return Settings.model_validate(
        {
            **raw,
            "slack": {
                "api_base_url": fake.api_url,
                "host": "127.0.0.1",
                "port": 0,
                "file_hosts": [fake.host],
                **slack,
            },
            "bot": bot or {},
            # No health endpoint unless a test asks for one (its default binds 0.0.0.0:9090).
            "ops": {"health_port": 0, **raw.get("ops", {})},
        }
    )


@asynccontextmanager
async def harness(
    raw: dict[str, Any], *, bot: dict[str, Any] | None = None, **slack: Any
) -> AsyncIterator[Harness]:
    async with FakeSlack(bot_token=BOT_TOKEN) as fake:
        settings = make_settings(raw, fake, bot=bot, **slack)
        async with open_search_service(settings, secrets=SECRETS, progress=False) as service:
            async with running_slack_bot(service, settings, SECRETS, socket_mode=False) as bot:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as http:
                    yield Harness(fake, bot, service, settings, http)


# ---------------------------------------------------------------------- reading replies


def posted_blocks(call) -> list[dict[str, Any]]:
    blocks = call.params["blocks"]
    return json.loads(blocks) if isinstance(blocks, str) else blocks


def button_values(call) -> list[str]:
    return [
        element["value"]
        for block in posted_blocks(call)
        if block["type"] == "actions"
        for element in block["elements"]
    ]


def result_rows(call) -> list[int]:
    """Rows of the results shown, in order, read from their "More like this" buttons."""
    actions = [decode_action(value) for value in button_values(call)]
    return [a.row for a in actions if isinstance(a, MoreLikeThis)]


def next_page(call) -> NextPage:
    (page,) = [a for a in map(decode_action, button_values(call)) if isinstance(a, NextPage)]
    return page


def header_text(call) -> str:
    return posted_blocks(call)[0]["text"]["text"]


def rows(result) -> list[int]:
    return [item.row for item in result.items]


def after_start(fake: FakeSlack) -> list:
    """The Web API calls made after the bot started (its auth.test at start left out)."""
    first, *rest = fake.calls
    assert first.method == "auth.test"
    return rest


# ---------------------------------------------------------------------- tests


async def test_slash_command_is_answered_and_dataset_images_are_uploaded_to_its_thread(base_settings):
    async with harness(base_settings) as h:
        # Slack's 3 s: the command is acked before the answer is posted (the post is held here).
        release = h.fake.hold("chat.postMessage")
        assert await h.command("a red circle + 0.5*sunset limit:4") == 200
        assert not h.fake.calls_to("chat.postMessage")
        release.set()
        (posted,) = await h.fake.wait_for_calls("chat.postMessage")
        await h.bot.drain()
        expected = await h.service.search(
            Query((Term("text", "a red circle"), Term("text", "sunset", 0.5)), limit=4)
        )
        assert posted.token == BOT_TOKEN and posted.params["channel"] == CHANNEL
        assert "thread_ts" not in posted.params  # a new message in the channel
        assert result_rows(posted) == rows(expected) and len(expected.items) == 4
        assert "a red circle" in header_text(posted) and "sunset" in header_text(posted)
        assert f"<@{USER}>" in json.dumps(posted_blocks(posted))
        # file:// images are not fetchable by Slack: their JPEGs go to the reply's thread.
        asked = h.fake.calls_to("files.getUploadURLExternal")
        (completed,) = h.fake.calls_to("files.completeUploadExternal")
        assert len(asked) == len(h.fake.uploads) == 4
        assert sorted(h.fake.uploads.values()) == sorted(
            [await h.service.image_bytes(i) for i in expected.items]
        )
        assert completed.params["channel_id"] == CHANNEL
        assert completed.params["thread_ts"] == h.fake.posted_ts[0]
        assert not h.fake.calls_to("chat.postEphemeral") and not h.fake.responses


async def test_bad_and_stale_signatures_get_401_and_cause_no_api_call(base_settings):
    async with harness(base_settings) as h:
        body = command_body("cat", user=USER, channel=CHANNEL, response_url=h.fake.response_url("x"))
        assert await h.post(body, FORM, secret="not-the-secret") == 401
        assert await h.post(body, FORM, timestamp=int(time.time()) - 6 * 60) == 401
        await h.bot.drain()
        assert after_start(h.fake) == [] and h.fake.responses == []
        assert await h.post(body, FORM) == 200  # the same body, signed now: answered
        await h.fake.wait_for_calls("chat.postMessage")


async def test_a_mention_with_an_image_downloads_it_with_the_token_and_answers_in_thread(
    base_settings, pictures
):
    data = (pictures / "p03.jpg").read_bytes()
    async with harness(base_settings) as h:
        # A file shared from elsewhere arrives as a stub: files.info gives its download URL.
        file = {
            "id": h.fake.add_file("photo.jpg", data, "image/jpeg")["id"],
            "file_access": "check_file_info",
        }
        event = message_event(
            "app_mention",
            "<@UBOTSEARCH> limit:3",
            user=USER,
            channel=CHANNEL,
            ts="1700000000.000100",
            files=[file],
        )
        assert await h.event(event, "Ev0MENTION1") == 200
        (posted,) = await h.fake.wait_for_calls("chat.postMessage")
        expected = await h.service.search(Query((Term("image", data),), limit=3))
        assert posted.params["thread_ts"] == "1700000000.000100"
        assert result_rows(posted) == rows(expected) and expected.items[0].id == "p03.jpg"
        assert [g.authorization for g in h.fake.file_gets] == [f"Bearer {BOT_TOKEN}"]
        assert [c.params["file"] for c in h.fake.calls_to("files.info")] == [file["id"]]


async def test_a_dm_with_an_audio_clip_is_answered_with_slacks_transcript(base_settings):
    clip = make_audio("m4a", seconds=1.5)  # a tone: the words come from Slack's transcript
    async with harness(base_settings) as h:
        file = h.fake.add_file(
            "audio_message.m4a", clip, "audio/mp4", subtype="slack_audio", transcript="a red circle"
        )
        event = message_event("message", "", user=USER, channel=DM, ts="1700000000.000200", files=[file])
        assert await h.event(event, "Ev0DMAUDIO1") == 200
        (posted,) = await h.fake.wait_for_calls("chat.postMessage")
        expected = await h.service.search(Query((Term("audio", clip, transcript="a red circle"),)))
        assert expected.heard == "a red circle"
        assert "heard: a red circle" in header_text(posted)
        assert posted.params["channel"] == DM and posted.params["thread_ts"] == "1700000000.000200"
        assert result_rows(posted) == rows(expected)


async def test_a_dm_with_an_audio_clip_without_slacks_transcript_is_heard_by_our_recogniser(base_settings):
    speech = Path(__file__).parent / "fixtures" / "speech"
    if not (speech / "manifest.json").exists():
        pytest.skip("the speech fixtures (tests/fixtures/speech) are not there")
    (entry,) = [
        f for f in json.loads((speech / "manifest.json").read_text())["files"] if f["file"] == "banana.m4a"
    ]
    clip = (speech / entry["file"]).read_bytes()
    async with harness(base_settings) as h:
        file = h.fake.add_file("audio_message.mp4", clip, "video/mp4", subtype="slack_audio")
        event = message_event("message", "", user=USER, channel=DM, ts="1700000000.000250", files=[file])
        assert await h.event(event, "Ev0DMAUDIO2") == 200
        (posted,) = await h.fake.wait_for_calls("chat.postMessage")
        # What the recogniser heard is shown, and searched as words ([speech] sound_weight = 0).
        heard = header_text(posted).split("_heard: ", 1)[1].rstrip("_")
        expected = await h.service.search(Query((Term("text", heard),)))
    assert set(entry["key_words"]) & set(heard.split())  # words of the clip, not of a tone
    assert result_rows(posted) == rows(expected)


async def test_a_retried_event_is_answered_once(base_settings):
    async with harness(base_settings) as h:
        event = message_event(
            "app_mention", "<@UBOTSEARCH> a blue square", user=USER, channel=CHANNEL, ts="1700000000.000300"
        )
        assert await h.event(event, "Ev0RETRY001") == 200
        assert (
            await h.event(
                event, "Ev0RETRY001", **{"X-Slack-Retry-Num": "1", "X-Slack-Retry-Reason": "http_timeout"}
            )
            == 200
        )
        await h.bot.drain()  # every answer started has been sent
        assert len(h.fake.calls_to("chat.postMessage")) == 1


async def test_buttons_work_also_on_a_new_app_instance(base_settings):
    async with harness(base_settings) as h:
        await h.command("a green triangle limit:3")
        (first,) = await h.fake.wait_for_calls("chat.postMessage")
        first_ts = h.fake.posted_ts[0]
        shown = result_rows(first)
        more = MoreLikeThis(shown[1], 2).encode()  # shown as #2
        assert more in button_values(first)
        assert await h.button(more, message_ts=first_ts) == 200
        _, similar = await h.fake.wait_for_calls("chat.postMessage", 2)
        expected = await h.service.more_like_row(shown[1])  # the default number of results
        assert similar.params["thread_ts"] == first_ts
        assert result_rows(similar) == rows(expected) and rows(expected)[0] == shown[1]
        page = next_page(first)
        assert page.offset == 3
    # A restart: a new service and a new app read the page key from the page memory on disk.
    async with harness(base_settings) as h2:
        assert await h2.button(page.encode(), message_ts=first_ts) == 200
        (second,) = await h2.fake.wait_for_calls("chat.postMessage")
        expected = await h2.service.search(Query((Term("text", "a green triangle"),), limit=3, offset=3))
        assert result_rows(second) == rows(expected) and not set(rows(expected)) & set(shown)
        assert second.params["thread_ts"] == first_ts
        assert "Results 4-6" in header_text(second)


async def test_more_like_names_the_rank_clicked_and_a_button_posted_before_still_works(base_settings):
    """#20 item 10: the header named the clicked image, not the rank the user saw."""
    async with harness(base_settings) as h:
        await h.command("a green triangle limit:3")
        (first,) = await h.fake.wait_for_calls("chat.postMessage")
        shown = result_rows(first)
        labels = [e["text"]["text"] for b in posted_blocks(first) if b["type"] == "actions" for e in b["elements"]]
        assert labels == ["More like #1", "More like #2", "More like #3", "Next page"]
        name = (await h.service.more_like_row(shown[1])).items[0].id
        assert await h.button(button_values(first)[1], message_ts=h.fake.posted_ts[0]) == 200
        _, more = await h.fake.wait_for_calls("chat.postMessage", 2)
        assert f"more like #2 ({name})" in header_text(more)
        # A message posted before the ids carried the rank: its button names the image only.
        assert await h.button(f"sa:more:{shown[1]}", message_ts=h.fake.posted_ts[0]) == 200
        *_, old = await h.fake.wait_for_calls("chat.postMessage", 3)
        assert f"more like {name}*" in header_text(old) and "#" not in header_text(old)
        assert result_rows(old) == result_rows(more)


async def test_a_limit_over_what_a_page_holds_is_said(base_settings):
    """#20 item 11: `limit:50` showed 10 without a word."""
    async with harness(base_settings) as h:
        await h.command("a green triangle limit:50")
        (posted,) = await h.fake.wait_for_calls("chat.postMessage")
        note = "Showing 10 results per page, not 50: a page holds at most 10."
        assert header_text(posted).splitlines()[1] == note and note in posted.params["text"]
        assert len(result_rows(posted)) == 10
        await h.command("a green triangle limit:0")
        await h.fake.wait_for(lambda: h.fake.responses)
        assert "limit:0 is not a number of results" in h.fake.responses[0]["text"]


async def test_a_filter_on_images_without_prompts_says_why_nothing_is_found(base_settings):
    """#20 item 11: the folder-built collection has no prompt text; `filter:` answered a bare
    "nothing found"."""
    async with harness(base_settings) as h:
        await h.command("a green triangle filter:green")
        await h.fake.wait_for(lambda: h.fake.responses)
        await h.bot.drain()
        (told,) = h.fake.responses
        assert told["response_type"] == "ephemeral"
        assert told["text"].startswith("This collection has no prompt text to filter on")
        assert not h.fake.calls_to("chat.postMessage")


async def test_a_429_from_slack_is_retried(base_settings):
    async with harness(base_settings) as h:
        h.fake.fail_next("chat.postMessage", 429)
        await h.command("a yellow star")
        await h.fake.wait_for_calls("chat.postMessage")
        await h.bot.drain()
        assert [c.status for c in h.fake.calls if c.method == "chat.postMessage"] == [429, 200]
        assert h.fake.responses == []  # no error was told


async def test_a_file_on_a_foreign_host_is_refused_without_sending_the_token(base_settings):
    async with RecordingHost() as foreign, harness(base_settings) as h:
        file = h.fake.add_file("photo.jpg", make_picture(1), "image/jpeg")
        file["url_private"] = file["url_private_download"] = (
            f"http://127.0.0.1:{foreign.port}/files-pri/photo.jpg"
        )
        event = message_event(
            "app_mention", "<@UBOTSEARCH>", user=USER, channel=CHANNEL, ts="1700000000.000400", files=[file]
        )
        await h.event(event, "Ev0FOREIGN1")
        (told,) = await h.fake.wait_for_calls("chat.postEphemeral")
        await h.bot.drain()
        assert (
            told.params["user"] == USER and "not on the chat platform's file servers" in told.params["text"]
        )
        assert foreign.requests == [] and h.fake.file_gets == []
        assert not h.fake.calls_to("chat.postMessage")


async def test_allowed_channels_rate_limit_and_usage_are_told_to_the_user_only(base_settings):
    async with harness(
        base_settings, allowed_channels=[CHANNEL], bot={"rate_limit_burst": 1, "rate_limit_per_minute": 0.01}
    ) as h:
        await h.command("cat", channel="C0ELSEWHERE")
        await h.command("")
        await h.command("cat")
        await h.command("dog")
        await h.fake.wait_for(lambda: len(h.fake.responses) >= 3)
        await h.bot.drain()
        texts = [r["text"] for r in h.fake.responses]
        assert all(r["response_type"] == "ephemeral" for r in h.fake.responses)
        assert any("not enabled in this channel" in t for t in texts)
        assert any("limit:8" in t for t in texts)  # the usage
        assert any("too fast" in t for t in texts)
        assert len(h.fake.calls_to("chat.postMessage")) == 1


async def test_socket_mode_from_config_receives_a_slash_command_and_acks_its_envelope(base_settings):
    """`[slack] mode = "socket"`: the bot opens a connection (app token), gets `hello`, then an
    envelope; Bolt acks it with its envelope_id and the answer goes through the Web API."""
    async with FakeSlack(bot_token=BOT_TOKEN) as fake:
        settings = make_settings(base_settings, fake, mode="socket")
        stop = asyncio.Event()
        socket_mode = wants_socket_mode(settings, flag=False)
        ready: asyncio.Future[SlackBot] = asyncio.get_running_loop().create_future()
        serving = asyncio.create_task(
            serve_slack(settings, SECRETS, socket_mode=socket_mode, stop=stop, on_ready=ready.set_result)
        )
        try:
            await asyncio.wait_for(ready, WAIT_S)  # connected before the model loads: wait for it
            payload = command_payload(
                "a purple cloud", user=USER, channel=CHANNEL, response_url=fake.response_url("s")
            )
            envelope_id = await fake.send_envelope("slash_commands", payload)
            (posted,) = await fake.wait_for_calls("chat.postMessage")
            await fake.wait_for(lambda: any(a.get("envelope_id") == envelope_id for a in fake.acks))
        finally:
            stop.set()
            await asyncio.wait_for(serving, 30)
        checked, opened = fake.calls_to("apps.connections.open")  # the token checked at start, then used
    assert checked.token == opened.token == SECRETS.slack_app_token and posted.token == BOT_TOKEN
    async with open_search_service(settings, secrets=SECRETS, progress=False) as service:
        expected = await service.search(Query((Term("text", "a purple cloud"),)))
    assert result_rows(posted) == rows(expected)


# ---------------------------------------------------------------------- replays and malformed requests (issue 17)


async def test_a_replayed_slash_command_is_not_answered_again(base_settings):
    """Slack never sends a slash command twice: the same signed request again within the
    signature's 5 minutes is a replay (anyone who saw it), acked with an empty 200 and not run."""
    async with harness(base_settings) as h:
        body = command_body("a red circle", user=USER, channel=CHANNEL, response_url=h.fake.response_url("r"))
        headers = {"Content-Type": FORM, **signed_headers(SIGNING_SECRET, body)}
        for _ in range(3):
            async with h.http.post(h.url, data=body.encode(), headers=headers) as response:
                assert response.status == 200
        await h.bot.drain()  # every answer started has been sent
        assert len(h.fake.calls_to("chat.postMessage")) == 1
        # A request that failed the signature check is not remembered: signed right, it is answered.
        other = command_body("a blue square", user=USER, channel=CHANNEL, response_url=h.fake.response_url("s"))
        assert await h.post(other, FORM, secret="not-the-secret") == 401
        assert await h.post(other, FORM) == 200
        await h.fake.wait_for_calls("chat.postMessage", 2)


@pytest.mark.parametrize("case", malformed("slack-command", "slack-timestamp"))
async def test_malformed_requests_get_a_clear_answer_and_log_no_error(base_settings, case, caplog):
    async with harness(base_settings) as h:
        body = command_body(case.text or "cat", user=USER, channel=CHANNEL, response_url=h.fake.response_url("m"))
        headers = {"X-Slack-Request-Timestamp": case.timestamp} if case.timestamp else {}
        with caplog.at_level(logging.WARNING):
            assert await h.post(body, FORM, **headers) == case.status
            await h.bot.drain()
        if case.expect:
            (told,) = h.fake.responses
            assert says(told["text"], case.expect), told["text"]
        else:
            assert after_start(h.fake) == [] and h.fake.responses == []
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
