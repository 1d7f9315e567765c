"""The Discord bot end to end: the real discord.py client against a fake Discord on 127.0.0.1
(tests/fakes/discord.py: gateway, REST, CDN), searching a small tiny-model dataset built here.

Expected results are computed with the same `SearchService` the bot uses; assertions are on the
REST calls the fake recorded (and the files uploaded with them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from contextlib import AsyncExitStack

import aiohttp
import discord
import pytest
import pytest_asyncio

from bot.common.handle import Attachment, build_query
from bot.common.reply import MoreLikeThis, NextPage, decode_action
from bot.discord.bot import (
    BAD_TOKEN,
    INTENT_REFUSED,
    SearchBot,
    invite_url,
    open_discord_bot,
    run_discord,
    serve_discord,
)
from bot.discord.cog import AUDIO_MENU, IMAGE_MENU, OUT_OF_DATE
from bot.discord.render import NOT_ATTACHED
from core.config import DiscordSettings, Secrets, Settings
from core.errors import ConfigError
from core.query import Query
from core.service import SearchResult, SearchService
from core.startup import open_search_service
from ingest.runner import run_ingest
from tests.bad_inputs import CASE_IDS, CASES, TOO_MANY_FILES, says
from tests.fakes.discord import (
    ACK_SECONDS,
    EPHEMERAL,
    MESSAGE_CONTENT_INTENT,
    TOKEN_SECONDS,
    FakeDiscord,
    Interaction,
    Posted,
)
from tests.media_factory import make_audio, make_picture, picture_folder, random_bytes
from tests.speech_fixtures import clips

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "MTE.fake-discord-bot-token.for-tests"
PICTURES = 12
LIMIT = 3  # [search] default_limit
MAX_FILE_BYTES = 200_000
BURST = 3
SPOKEN = next(c for c in clips("speech") if c.file.endswith(".ogg"))  # a voice message saying words


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dataset_settings(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("discord")
    pictures = picture_folder(root / "pictures", PICTURES)
    settings = Settings.model_validate(
        {
            "model": {"name": "tiny", "cache_dir": str(root / "cache")},
            "store": {"dataset": str(root / "dataset")},
            "search": {"collapse_cosine": 1.0, "default_limit": LIMIT, "max_limit": 20},
            "limits": {"max_file_bytes": MAX_FILE_BYTES},
            "bot": {"rate_limit_burst": BURST, "rate_limit_per_minute": 1},
        }
    )
    report = run_ingest(settings, f"folder:{pictures}", secrets=Secrets(), workers=0, progress=False)
    assert report.summary.added == PICTURES
    return settings


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake():
    async with FakeDiscord(TOKEN) as fake:
        yield fake


@pytest.fixture(scope="module")
def dm_users(fake) -> list[int]:
    return [fake.snowflake() for _ in range(3)]


def with_discord(settings: Settings, **discord_settings) -> Settings:
    section = settings.discord.model_copy(update=discord_settings)
    return Settings.model_validate({**settings.model_dump(), "discord": section.model_dump()})


@pytest.fixture(scope="module")
def settings(dataset_settings, fake, dm_users) -> Settings:
    return with_discord(
        dataset_settings,
        api_base_url=fake.api_base_url,
        gateway_url=fake.gateway_url,
        attachment_hosts=[fake.cdn_host],
        allowed_channels=[fake.channel_id, *(fake.dm_channel_id(u) for u in dm_users)],
        message_content_intent=True,  # the fake's app has it enabled (tests below turn it off)
    )


class BotRunner:
    """The bot under test (and its search service), restartable."""

    def __init__(self, fake: FakeDiscord, settings: Settings):
        self.fake = fake
        self.settings = settings
        self.service: SearchService
        self.bot: SearchBot
        self._service_stack = AsyncExitStack()
        self._bot_stack = AsyncExitStack()
        self._task: asyncio.Task | None = None

    async def open_service(self) -> None:
        self.service = await self._service_stack.enter_async_context(
            open_search_service(self.settings, secrets=Secrets(), progress=False)
        )

    async def start(self, settings: Settings | None = None, *, sync: bool | int = False) -> None:
        settings = settings or self.settings
        self.bot = await self._bot_stack.enter_async_context(
            open_discord_bot(settings, self.service, sync=sync, guild_ready_timeout=0.05)
        )
        self._task = asyncio.create_task(self.bot.start(TOKEN))
        ready = asyncio.create_task(self.bot.wait_until_ready())
        done, _ = await asyncio.wait({self._task, ready}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            raise RuntimeError(f"the bot did not connect: {self._task.exception() if self._task.done() else 'timeout'}")

    async def stop(self) -> None:
        await self.bot.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, 20)
        await self._bot_stack.aclose()

    async def restart(self, settings: Settings | None = None, *, sync: bool | int = False, new_service: bool = False):
        await self.stop()
        if new_service:
            await self._service_stack.aclose()
            await self.open_service()
        await self.start(settings, sync=sync)

    async def close(self) -> None:
        await self.stop()
        await self._service_stack.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runner(fake, settings):
    endpoints = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    runner = BotRunner(fake, settings)
    await runner.open_service()
    await runner.start()
    assert discord.http.Route.BASE == fake.api_base_url
    yield runner
    await runner.close()
    assert (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == endpoints
    assert fake.unknown_calls() == []


# --------------------------------------------------------------------------- helpers


def final(interaction: Interaction) -> Posted | None:
    """The interaction's answer once there is one (not the deferred "thinking" placeholder)."""
    done = [m for m in interaction.messages if not m.loading and not m.deleted]
    return done[-1] if done else None


async def answer_to(fake: FakeDiscord, interaction: Interaction) -> Posted:
    return await fake.wait_for(lambda: final(interaction))


async def reply_to(fake: FakeDiscord, message: dict) -> Posted:
    replies = await fake.wait_for(lambda: fake.replies_to(message))
    assert len(replies) == 1
    return replies[0]


def shown_images(posted: Posted) -> list[bytes]:
    """The image each embed shows, in order, read from the files uploaded with the message."""
    files = {f.filename: f.data for f in posted.files}
    images = []
    for embed in posted.embeds:
        url = embed["image"]["url"]
        assert url.startswith("attachment://"), url
        images.append(files[url.removeprefix("attachment://")])
    return images


async def stored_images(service: SearchService, result: SearchResult) -> list[bytes]:
    images = [await service.image_bytes(item) for item in result.items]
    assert all(images)
    return images


async def assert_shows(service: SearchService, posted: Posted, expected: SearchResult) -> None:
    """`posted` shows exactly the results of `expected`: images, scores, buttons."""
    assert expected.items, "the expected search found nothing"
    assert not posted.ephemeral
    assert shown_images(posted) == await stored_images(service, expected)
    for embed, item in zip(posted.embeds, expected.items, strict=True):
        assert f"score {item.score:.3f}" in embed["title"]
    actions = [decode_action(i) for i in posted.custom_ids()]
    assert actions[: len(expected.items)] == [
        MoreLikeThis(item.row, expected.offset + i) for i, item in enumerate(expected.items, 1)
    ]
    if expected.has_more:
        assert isinstance(actions[-1], NextPage) and actions[-1].offset == expected.next_offset
    assert expected.description in posted.content


def text_query(text: str, limit: int = LIMIT, settings: Settings | None = None) -> Query:
    limits = (settings or Settings()).limits
    return build_query(text, [], limits=limits, limit=limit)


def media_query(kind: str, data: bytes, filename: str, limit: int = LIMIT) -> Query:
    return build_query("", [Attachment(kind, data, filename)], limits=Settings().limits, limit=limit)


def assert_acked_in_time(interaction: Interaction, ack_type: int = 5) -> None:
    assert interaction.ack_type == ack_type
    assert interaction.ack_at is not None and interaction.ack_at - interaction.created < ACK_SECONDS


# --------------------------------------------------------------------------- slash command


async def test_slash_command_with_text_defers_at_once_then_follows_up_with_the_results(fake, runner):
    text = "a red circle + 0.5*sky -filter:nothing"
    interaction = await fake.slash_command(fake.snowflake(), {"query": text})
    posted = await answer_to(fake, interaction)

    assert_acked_in_time(interaction)
    first, *rest = [c for c in fake.calls if str(interaction.id) in c.path or interaction.token in c.path]
    assert first.path.endswith("/callback") and all(c.at >= first.at for c in rest)
    expected = await runner.service.search(text_query(text))
    await assert_shows(runner.service, posted, expected)
    assert posted.content.startswith(f"Results 1-{LIMIT} for: ")
    assert len(posted.embeds) == LIMIT and len(posted.files) == LIMIT


async def test_filter_and_exclude_options_filter_by_prompt(fake, runner):
    # The folder-built dataset has no prompts: an excluded word leaves every image in, and a
    # required one is told why it matches nothing (#20 item 11: a bare "Nothing found" before).
    interaction = await fake.slash_command(fake.snowflake(), {"query": "a red circle", "exclude": '"zebra"'})
    expected = await runner.service.search(text_query('a red circle -filter:"zebra"'))
    await assert_shows(runner.service, await answer_to(fake, interaction), expected)
    assert len(expected.items) == LIMIT
    interaction = await fake.slash_command(fake.snowflake(), {"query": "a red circle", "filter": "zebra"})
    message = await failed(fake, interaction)
    assert message.startswith("This collection has no prompt text to filter on")


async def test_slash_command_with_an_image_downloads_it_from_the_cdn_after_the_ack(fake, runner):
    picture = make_picture(5, "PNG")
    image = fake.upload("query.png", picture, "image/png")
    interaction = await fake.slash_command(fake.snowflake(), {"limit": 5}, attachments={"image": image})
    posted = await answer_to(fake, interaction)

    assert_acked_in_time(interaction)
    (download,) = fake.cdn_gets(image)
    assert download.at >= interaction.ack_at
    expected = await runner.service.search(media_query("image", picture, "query.png", limit=5))
    await assert_shows(runner.service, posted, expected)
    assert len(posted.embeds) == 5


async def test_uploads_fit_the_interaction_upload_limit(fake, runner):
    expected = await runner.service.search(text_query("a green square"))
    sizes = [len(b) for b in await stored_images(runner.service, expected)]
    limit = sum(sizes) - 1  # the results' images do not all fit as they are
    interaction = await fake.slash_command(fake.snowflake(), {"query": "a green square"}, upload_limit=limit)
    posted = await answer_to(fake, interaction)  # the fake answers 413 to uploads over the limit

    assert sum(len(f.data) for f in posted.files) <= limit
    assert len(posted.embeds) == LIMIT
    files = {f.filename for f in posted.files}
    for embed in posted.embeds:
        if "image" in embed:
            assert embed["image"]["url"].removeprefix("attachment://") in files
        else:
            assert embed["footer"]["text"] == NOT_ATTACHED
    assert sorted(len(f.data) for f in posted.files) != sorted(sizes)


# --------------------------------------------------------------------------- buttons


async def test_more_like_this_and_next_page_buttons(fake, runner):
    interaction = await fake.slash_command(fake.snowflake(), {"query": "a blue disc"})
    posted = await answer_to(fake, interaction)
    expected = await runner.service.search(text_query("a blue disc"))

    more = await fake.click(fake.snowflake(), posted, posted.button("More like #2"))
    more_answer = await answer_to(fake, more)
    assert_acked_in_time(more)
    assert more_answer is not posted
    clicked = expected.items[1]
    await assert_shows(runner.service, more_answer,
                       await runner.service.more_like_row(clicked.row, LIMIT, rank=2))
    # #20 item 10: the rank the user clicked, and the image's name.
    assert more_answer.content.startswith(f"Results 1-{LIMIT} for: more like #2 ({clicked.id})")
    # A message posted before the ids carried the rank: its button names the image only.
    old_id = f"sa:more:{clicked.row}"
    before = dataclasses.replace(posted, body=json.loads(json.dumps(posted.body).replace(
        json.dumps(posted.button("More like #2")), json.dumps(old_id))))
    old = await answer_to(fake, await fake.click(fake.snowflake(), before, old_id))
    assert old.content.startswith(f"Results 1-{LIMIT} for: more like {clicked.id}")
    assert old.embeds == more_answer.embeds

    page_id = posted.button("Next page")
    page = await fake.click(fake.snowflake(), posted, page_id)
    await fake.wait_for(lambda: posted.edits == 1)
    assert_acked_in_time(page, ack_type=6)  # the message is updated in place: no new message
    action = decode_action(page_id)
    assert isinstance(action, NextPage) and action.offset == LIMIT
    next_page = await runner.service.page(action.page_key, action.offset)
    await assert_shows(runner.service, posted, next_page)
    assert posted.content.startswith(f"Results {LIMIT + 1}-{2 * LIMIT} for: ")


async def test_buttons_of_a_reply_work_after_a_restart(fake, runner, caplog):
    caplog.set_level(logging.DEBUG)
    interaction = await fake.slash_command(fake.snowflake(), {"query": "an orange sun"})
    posted = await answer_to(fake, interaction)
    old_bot = runner.bot

    await runner.restart(new_service=True)
    assert runner.bot is not old_bot and old_bot.is_closed()
    page_id = posted.button("Next page")
    page = await fake.click(fake.snowflake(), posted, page_id)
    await fake.wait_for(lambda: posted.edits == 1)
    action = decode_action(page_id)
    await assert_shows(runner.service, posted, await runner.service.page(action.page_key, action.offset))

    more = await fake.click(fake.snowflake(), posted, posted.custom_ids()[0])
    assert final(page) is posted
    action = decode_action(posted.custom_ids()[0])
    assert action.rank == LIMIT + 1  # the first result of the second page
    await assert_shows(runner.service, await answer_to(fake, more),
                       await runner.service.more_like_row(action.row, LIMIT, rank=action.rank))
    assert TOKEN not in caplog.text


# --------------------------------------------------------------------------- messages


async def test_a_mention_is_answered_with_a_reply_and_other_messages_are_ignored(fake, runner):
    ignored = fake.user_message(fake.snowflake(), "a yellow star")
    mention = fake.user_message(fake.snowflake(), "a yellow star", mention=True)
    await fake.send_message(ignored)
    await fake.send_message(mention)
    reply = await reply_to(fake, mention)

    await assert_shows(runner.service, reply, await runner.service.search(text_query("a yellow star")))
    assert fake.replies_to(ignored) == []
    assert reply.body["allowed_mentions"]["parse"] == []


async def test_a_voice_message_in_a_dm_is_searched_as_audio(fake, runner, dm_users):
    voice = make_audio("ogg", 1.5, "sine")
    clip = fake.upload("voice-message.ogg", voice, "audio/ogg", voice=True,
                       channel_id=fake.dm_channel_id(dm_users[0]))
    message = fake.user_message(dm_users[0], "", attachments=[clip], dm=True, voice=True)
    await fake.send_message(message)
    reply = await reply_to(fake, message)

    expected = await runner.service.search(media_query("audio", voice, "voice-message.ogg"))
    await assert_shows(runner.service, reply, expected)
    assert ("heard: " in reply.content) == bool(expected.heard)


async def test_a_spoken_voice_message_is_answered_with_what_was_heard(fake, runner, dm_users):
    voice = SPOKEN.read()
    clip = fake.upload("voice-message.ogg", voice, "audio/ogg", voice=True,
                       channel_id=fake.dm_channel_id(dm_users[1]))
    message = fake.user_message(dm_users[1], "", attachments=[clip], dm=True, voice=True)
    await fake.send_message(message)
    reply = await reply_to(fake, message)

    expected = await runner.service.search(media_query("audio", voice, "voice-message.ogg"))
    assert expected.heard
    assert f"heard: {expected.heard}" in reply.content.splitlines()
    await assert_shows(runner.service, reply, expected)


# --------------------------------------------------------------------------- context menus


async def test_context_menus_search_with_a_message_image_or_audio(fake, runner):
    picture = make_picture(8)
    photo = fake.upload("cat.jpg", picture, "image/jpeg")
    target = fake.user_message(fake.snowflake(), "look at this", attachments=[photo])
    by_image = await fake.context_menu(fake.snowflake(), IMAGE_MENU, target)
    posted = await answer_to(fake, by_image)
    assert_acked_in_time(by_image)
    await assert_shows(runner.service, posted, await runner.service.search(media_query("image", picture, "cat.jpg")))

    sound = make_audio("ogg", 1.0, "noise")
    voice = fake.user_message(fake.snowflake(), "", voice=True,
                              attachments=[fake.upload("voice-message.ogg", sound, "audio/ogg", voice=True)])
    by_audio = await fake.context_menu(fake.snowflake(), AUDIO_MENU, voice)
    posted = await answer_to(fake, by_audio)
    await assert_shows(runner.service, posted,
                       await runner.service.search(media_query("audio", sound, "voice-message.ogg")))

    no_audio = await fake.context_menu(fake.snowflake(), AUDIO_MENU, target)
    refusal = await answer_to(fake, no_audio)
    assert no_audio.ack_type == 4 and refusal.ephemeral and "no voice message or audio file" in refusal.content


# --------------------------------------------------------------------------- Discord's rules


async def test_the_fake_rejects_late_acks_and_expired_followups(fake):
    async with aiohttp.ClientSession() as http:
        async def post(path: str, body: dict) -> tuple[int, dict]:
            async with http.post(f"{fake.api_base_url}{path}", json=body) as response:
                return response.status, await response.json()

        late = fake.new_interaction(2, {"name": "search", "type": 1}, user=fake.user(1), channel_id=None)
        fake.advance(ACK_SECONDS + 0.1)
        assert await post(f"/interactions/{late.id}/{late.token}/callback?with_response=1", {"type": 5}) == \
            (404, {"code": 10062, "message": "Unknown interaction"})

        ok = fake.new_interaction(2, {"name": "search", "type": 1}, user=fake.user(1), channel_id=None)
        status, _ = await post(f"/webhooks/{fake.app_id}/{ok.token}", {"content": "too early"})
        assert status == 404  # no followup before an acknowledgement
        status, _ = await post(f"/interactions/{ok.id}/{ok.token}/callback", {"type": 5})
        assert status == 200
        status, again = await post(f"/interactions/{ok.id}/{ok.token}/callback", {"type": 5})
        assert (status, again["code"]) == (400, 40060)
        status, _ = await post(f"/webhooks/{fake.app_id}/{ok.token}", {"content": "in time"})
        assert status == 200
        fake.advance(TOKEN_SECONDS)
        assert await post(f"/webhooks/{fake.app_id}/{ok.token}", {"content": "too late"}) == \
            (401, {"code": 50027, "message": "Invalid Webhook Token"})


async def test_a_429_is_retried_after_retry_after(fake, runner):
    fake.rate_limit_once("POST", rf"^/api/v10/webhooks/{fake.app_id}/", retry_after=0.05)
    interaction = await fake.slash_command(fake.snowflake(), {"query": "a purple ring"})
    posted = await answer_to(fake, interaction)

    limited, retried = fake.calls_to("POST", rf"/webhooks/{fake.app_id}/{interaction.token}$")
    assert (limited.status, retried.status) == (429, 200)
    assert retried.at - limited.at >= 0.05
    assert retried.body == limited.body
    await assert_shows(runner.service, posted, await runner.service.search(text_query("a purple ring")))


# --------------------------------------------------------------------------- errors


async def refused(fake: FakeDiscord, interaction: Interaction) -> str:
    """The ephemeral answer given at once, without a defer or a download."""
    posted = await answer_to(fake, interaction)
    assert interaction.ack_type == 4 and posted.ephemeral
    assert posted.body["flags"] & EPHEMERAL
    return posted.content


async def failed(fake: FakeDiscord, interaction: Interaction) -> str:
    """The ephemeral answer given after a defer; the public "thinking" message is gone."""
    posted = await answer_to(fake, interaction)
    assert interaction.ack_type == 5 and interaction.original is not None and interaction.original.deleted
    assert posted.ephemeral and not posted.embeds
    return posted.content


async def test_unsupported_and_oversized_files_are_refused_before_downloading(fake, runner):
    text = fake.upload("notes.txt", b"hello", "text/plain")
    message = await refused(fake, await fake.slash_command(fake.snowflake(), {}, attachments={"image": text}))
    assert message.lower().startswith("notes.txt (text/plain) is not an image or audio clip")

    big = fake.upload("big.png", make_picture(1, "PNG"), "image/png", size=3 * MAX_FILE_BYTES)
    message = await refused(fake, await fake.slash_command(fake.snowflake(), {}, attachments={"image": big}))
    assert message.lower().startswith("big.png is 600 kb; the limit is 200 kb")

    sound = fake.upload("song.mp3", b"ID3", "audio/mpeg")
    message = await refused(fake, await fake.slash_command(fake.snowflake(), {}, attachments={"image": sound}))
    assert "not an image" in message
    assert fake.cdn_gets(text) == fake.cdn_gets(big) == fake.cdn_gets(sound) == []


async def test_a_file_larger_than_it_claims_is_cut_off_while_downloading(fake, runner):
    liar = fake.upload("liar.png", random_bytes(MAX_FILE_BYTES + 10_000), "image/png", size=1000)
    message = await failed(fake, await fake.slash_command(fake.snowflake(), {}, attachments={"image": liar}))
    assert message.lower().startswith("liar.png is 210 kb; the limit is 200 kb")


async def test_a_damaged_image_gets_an_ephemeral_error(fake, runner):
    broken = fake.upload("broken.png", random_bytes(4096), "image/png")
    message = await failed(fake, await fake.slash_command(fake.snowflake(), {}, attachments={"image": broken}))
    assert "not an image I can read" in message
    assert len(fake.cdn_gets(broken)) == 1


async def test_an_attachment_on_a_foreign_host_is_not_downloaded(fake, runner):
    picture = make_picture(2, "PNG")
    attachment = fake.upload("far.png", picture, "image/png")
    attachment["url"] = attachment["url"].replace("127.0.0.1", "localhost")
    message = await failed(fake, await fake.slash_command(fake.snowflake(), {}, attachments={"image": attachment}))
    assert message.lower().startswith("far.png is not on the chat platform's file servers")
    assert fake.cdn_gets(attachment) == []


async def test_a_query_syntax_error_is_refused_at_once(fake, runner):
    message = await refused(fake, await fake.slash_command(fake.snowflake(), {"query": '"unclosed'}))
    assert "quote" in message


async def test_an_unknown_command_says_the_commands_need_a_sync(fake, runner):
    message = await refused(fake, await fake.slash_command(fake.snowflake(), {"query": "a cat"}, name="find"))
    assert message.startswith(OUT_OF_DATE)


async def test_a_page_holds_at_most_the_ten_embeds_of_a_message(fake, runner):
    assert runner.settings.search.max_limit > 10 and PICTURES > 10
    posted = await answer_to(fake, await fake.slash_command(fake.snowflake(), {"query": "a cat", "limit": 50}))
    assert len(posted.embeds) == 10
    # #20 item 11: said, not clamped silently.
    assert posted.content.splitlines()[1] == "Showing 10 results per page, not 50: a page holds at most 10."
    assert decode_action(posted.button("Next page")).offset == 10


async def test_searching_too_fast_is_refused_per_user(fake, runner):
    user = fake.snowflake()
    interactions = [await fake.slash_command(user, {"query": f"a tree {i}"}) for i in range(BURST + 1)]
    other = await fake.slash_command(fake.snowflake(), {"query": "a tree"})
    answers = [await answer_to(fake, i) for i in interactions]

    limited = [a for a in answers if a.ephemeral]
    assert len(limited) == 1 and "searching too fast" in limited[0].content
    assert sum(len(a.embeds) == LIMIT for a in answers) == BURST
    assert not (await answer_to(fake, other)).ephemeral


async def test_a_channel_outside_the_allow_list_is_refused(fake, runner):
    interaction = await fake.slash_command(fake.snowflake(), {"query": "a boat"}, channel_id=fake.other_channel_id)
    assert await refused(fake, interaction) == "Searching is not enabled in this channel"

    elsewhere = fake.user_message(fake.snowflake(), "a boat", mention=True, channel_id=fake.other_channel_id)
    here = fake.user_message(fake.snowflake(), "a boat", mention=True)
    await fake.send_message(elsewhere)
    await fake.send_message(here)
    await reply_to(fake, here)
    assert fake.replies_to(elsewhere) == []


# --------------------------------------------------------------------------- the bad-input corpus


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
async def test_each_bad_input_gets_a_clear_reply(fake, runner, dm_users, case):
    """Text as /search's query, one file in its image or audio slot, many files in a DM."""
    # A new user each time (this is not the rate limit's test); the DM's user is allowed there.
    user = dm_users[2] if case.kind == "count" else fake.snowflake()
    uploads = [fake.upload(case.filename, case.data, case.mimetype, size=case.declared_size)
               for _ in range(TOO_MANY_FILES if case.kind == "count" else int(case.kind != "text"))]
    if case.kind == "count":
        message = fake.user_message(user, "", attachments=uploads, dm=True)
        await fake.send_message(message)
        answer = await reply_to(fake, message)  # a message gets a reply, errors too
    else:
        options = {"query": case.text} if case.kind == "text" and case.text else {}
        slot = {case.kind: uploads[0]} if uploads else None
        answer = await answer_to(fake, await fake.slash_command(user, options, attachments=slot))
        assert answer.ephemeral == (not case.searchable)
    if case.searchable:
        expected = await runner.service.search(media_query(case.kind, case.same_as or case.data, case.filename))
        await assert_shows(runner.service, answer, expected)
    else:
        assert not answer.embeds and says(answer.content, case.expected(runner.settings)), answer.content
    if case.declared_size is not None:
        assert fake.cdn_gets(uploads[0]) == []  # refused from its declared size, not downloaded


async def test_after_the_corpus_the_bot_still_searches(fake, runner):
    posted = await answer_to(fake, await fake.slash_command(fake.snowflake(), {"query": "a white cloud"}))
    await assert_shows(runner.service, posted, await runner.service.search(text_query("a white cloud")))


# --------------------------------------------------------------------------- startup


async def test_commands_are_registered_only_with_sync(fake, runner):
    assert fake.calls_to("PUT", r"/commands$") == []
    await runner.restart(sync=True)
    commands = {(c["name"], c.get("type", 1)): c for c in fake.commands["global"]}
    assert set(commands) == {("search", 1), (IMAGE_MENU, 3), (AUDIO_MENU, 3)}
    options = {o["name"]: o for o in commands[("search", 1)]["options"]}
    assert {name: o["type"] for name, o in options.items()} == {
        "query": 3, "image": 11, "audio": 11, "limit": 4, "filter": 3, "exclude": 3, "source": 3, "in": 3}
    assert [c["value"] for c in options["source"]["choices"]] == ["memory", "collection", "both"]
    assert (options["limit"]["min_value"], options["limit"]["max_value"]) == (1, 10)
    assert not any(o.get("required") for o in options.values())


async def test_without_the_message_content_intent(fake, runner, settings):
    fake.message_content_enabled = False
    try:
        async with open_discord_bot(settings, runner.service, guild_ready_timeout=0.05) as bot:
            with pytest.raises(discord.PrivilegedIntentsRequired):
                await asyncio.wait_for(bot.start(TOKEN), 20)

        await runner.restart(with_discord(settings, message_content_intent=False))
        assert not fake.identifies[-1]["intents"] & MESSAGE_CONTENT_INTENT
        photo = fake.upload("a.jpg", make_picture(3), "image/jpeg")
        plain = fake.user_message(fake.snowflake(), "a red car", attachments=[photo])
        mention = fake.user_message(fake.snowflake(), "a red car", mention=True)
        await fake.send_message(plain)
        await fake.send_message(mention)
        reply = await reply_to(fake, mention)
        await assert_shows(runner.service, reply, await runner.service.search(text_query("a red car")))
        assert fake.replies_to(plain) == []

        interaction = await fake.slash_command(fake.snowflake(), {"query": "a red car"})
        assert len((await answer_to(fake, interaction)).embeds) == LIMIT
    finally:
        fake.message_content_enabled = True
        await runner.restart(settings)
    assert fake.identifies[-1]["intents"] & MESSAGE_CONTENT_INTENT


async def test_run_discord_needs_the_token():
    with pytest.raises(ConfigError, match="DISCORD_TOKEN"):
        run_discord(Settings(), Secrets(), sync=False)


async def test_the_documented_defaults_start_without_the_privileged_intent(fake, runner, settings, capsys):
    assert DiscordSettings().message_content_intent is False  # docs/discord.md: leave it off
    fake.message_content_enabled = False  # a new app in the Developer Portal
    try:
        await runner.restart(with_discord(settings, message_content_intent=DiscordSettings().message_content_intent))
        mention = fake.user_message(fake.snowflake(), "a red car", mention=True)
        await fake.send_message(mention)
        reply = await reply_to(fake, mention)
        await assert_shows(runner.service, reply, await runner.service.search(text_query("a red car")))
    finally:
        fake.message_content_enabled = True
        await runner.restart(settings)
    started = capsys.readouterr().out
    assert f"logged in as {runner.bot.user}" in started and "servers; invite it with" in started
    assert invite_url(runner.bot.application_id) in started
    assert f"client_id={runner.bot.application_id}" in invite_url(runner.bot.application_id)


def no_ops_port(settings: Settings) -> Settings:
    ops = settings.ops.model_copy(update={"health_port": 0})
    return Settings.model_validate({**settings.model_dump(), "ops": ops.model_dump()})


async def test_a_wrong_token_is_one_line_that_names_the_fix(fake, runner, settings):
    with pytest.raises(ConfigError) as refused:
        await asyncio.wait_for(serve_discord(no_ops_port(settings), runner.service, "MTE.wrong.token",
                                             guild_ready_timeout=0.05), 20)
    assert str(refused.value) == BAD_TOKEN and "Reset Token" in BAD_TOKEN and "DISCORD_TOKEN" in BAD_TOKEN
    assert refused.value.__cause__ is None and "\n" not in str(refused.value)


async def test_a_refused_intent_is_one_line_that_names_the_switch(fake, runner, settings):
    fake.message_content_enabled = False
    try:
        with pytest.raises(ConfigError) as refused:
            await asyncio.wait_for(serve_discord(no_ops_port(settings), runner.service, TOKEN,
                                                 guild_ready_timeout=0.05), 20)
    finally:
        fake.message_content_enabled = True
    assert str(refused.value) == INTENT_REFUSED
    assert "Message Content Intent" in INTENT_REFUSED and "message_content_intent = false" in INTENT_REFUSED


async def test_sync_with_a_guild_registers_the_commands_there_at_once(fake, runner):
    guild = fake.guild_id
    await runner.restart(sync=guild)
    names = {(c["name"], c.get("type", 1)) for c in fake.commands[str(guild)]}
    assert names == {("search", 1), (IMAGE_MENU, 3), (AUDIO_MENU, 3)}
    await runner.restart()


async def test_an_interaction_that_expired_is_logged_once_without_a_traceback(fake, runner, caplog):
    """#16 item 2: a command that reaches the bot after Discord's 3 s (a frozen loop, a slow
    network) cannot be answered; the bot says so once in its log and goes on."""
    data = {"id": str(fake.snowflake()), "name": "search", "type": 1,
            "options": [{"name": "query", "type": 3, "value": "a red car"}]}
    late = fake.new_interaction(2, data, user=fake.user(fake.snowflake()), channel_id=fake.channel_id)
    late.created -= ACK_SECONDS + 1  # already past Discord's deadline when it arrives
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        await fake.dispatch("INTERACTION_CREATE", late.payload)
        posted = await answer_to(fake, await fake.slash_command(fake.snowflake(), {"query": "a blue boat"}))
    assert len(posted.embeds) == LIMIT  # the next one is answered as usual
    for _ in range(100):  # bounded: the late one's failed answer may still be on its way
        expired = [r for r in caplog.records if "expired before it was answered" in r.getMessage()]
        if expired:
            break
        await asyncio.sleep(0.05)
    assert len(expired) == 1 and str(late.id) in expired[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
