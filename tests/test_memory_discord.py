"""Channel memory on Discord, end to end: the real discord.py client against the fake Discord
(tests/fakes/discord.py) with two servers, roles and a private channel, a tiny-model collection
and channel memory on disk (issue #18).

Each test uses its own channels, so they share one bot. Waiting is for conditions (the memory
holds N images, a reply arrived), bounded, never for a fixed time.
"""

from __future__ import annotations

import asyncio
import dataclasses
from contextlib import AsyncExitStack

import discord
import pytest
import pytest_asyncio

import bot.discord.memory as discord_memory
from bot.discord.bot import (
    MEMORY_INTENT_REFUSED,
    SearchBot,
    open_discord_bot,
    serve_discord,
)
from bot.discord.memory import NEEDS_MANAGE_CHANNELS, NEEDS_MANAGE_SERVER
from core.config import Secrets, Settings
from core.errors import ConfigError
from core.memory.model import Tenant
from core.service import SearchService
from core.startup import open_search_service
from ingest.runner import run_ingest
from tests.fakes.discord import FakeDiscord, Interaction, Posted
from tests.media_factory import make_picture, picture_folder
from tests.speech_fixtures import clips

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "MTE.fake-discord-bot-token.for-memory-tests"
SPOKEN = next(c for c in clips("speech") if c.file.endswith(".ogg"))
MANAGE_CHANNELS, MANAGE_GUILD = 1 << 4, 1 << 5


class World:
    """The fake's servers, roles and channels used by these tests."""

    def __init__(self, fake: FakeDiscord):
        self.fake = fake
        self.guild_a = fake.guild_id
        self.mods = fake.add_role(self.guild_a, "mods", MANAGE_CHANNELS)
        self.admins = fake.add_role(self.guild_a, "admins", MANAGE_GUILD | MANAGE_CHANNELS)
        self.insiders = fake.add_role(self.guild_a, "insiders")
        self.private = fake.add_channel(self.guild_a, private_to=self.insiders)
        self.guild_b, self.channel_b = fake.add_guild("server B")
        self.mods_b = fake.add_role(self.guild_b, "mods", MANAGE_CHANNELS)
        self.mod, self.member, self.outsider = fake.snowflake(), fake.snowflake(), fake.snowflake()

    async def channel(self) -> int:
        """A fresh public channel in server A."""
        return await self.fake.create_channel(self.guild_a)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fake():
    async with FakeDiscord(TOKEN) as fake:
        yield fake


@pytest.fixture(scope="module")
def world(fake) -> World:
    return World(fake)  # before the bot connects: every server comes in READY


@pytest.fixture(scope="module")
def settings(tmp_path_factory, fake, world) -> Settings:
    root = tmp_path_factory.mktemp("memory-discord")
    pictures = picture_folder(root / "pictures", 6)
    settings = Settings.model_validate({
        "model": {"name": "tiny", "cache_dir": str(root / "cache")},
        "store": {"dataset": str(root / "dataset")},
        "search": {"collapse_cosine": 1.0, "default_limit": 5, "max_limit": 20},
        "bot": {"rate_limit_burst": 100, "rate_limit_per_minute": 600},
        "discord": {"api_base_url": fake.api_base_url, "gateway_url": fake.gateway_url,
                    "attachment_hosts": [fake.cdn_host]},
        "memory": {"enabled": True, "dir": str(root / "memory"), "backfill_max": 40},
    })
    report = run_ingest(settings, f"folder:{pictures}", secrets=Secrets(), workers=0, progress=False)
    assert report.summary.added == 6
    return settings


class Runner:
    def __init__(self) -> None:
        self.stack = AsyncExitStack()
        self.service: SearchService
        self.bot: SearchBot
        self.task: asyncio.Task

    async def start(self, fake: FakeDiscord, settings: Settings) -> None:
        self.service = await self.stack.enter_async_context(
            open_search_service(settings, secrets=Secrets(), progress=False))
        self.bot = await self.stack.enter_async_context(
            open_discord_bot(settings, self.service, guild_ready_timeout=0.05))
        self.task = asyncio.create_task(self.bot.start(TOKEN))
        await asyncio.wait_for(self.bot.wait_until_ready(), 20)

    async def close(self) -> None:
        await self.bot.close()
        await asyncio.wait_for(self.task, 20)
        await self.stack.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runner(fake, settings, world):
    runner = Runner()
    await runner.start(fake, settings)
    yield runner
    await runner.close()
    assert fake.unknown_calls() == []


# --------------------------------------------------------------------------- helpers


def final(interaction: Interaction) -> Posted | None:
    done = [m for m in interaction.messages if not m.loading and not m.deleted]
    return done[-1] if done else None


async def answer(fake: FakeDiscord, interaction: Interaction) -> Posted:
    return await fake.wait_for(lambda: final(interaction))


async def until(predicate, timeout: float = 30.0) -> None:
    """Wait (bounded) for work the bot does in the background (indexing, forgetting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for the bot")
        await asyncio.sleep(0.02)


async def memory_cmd(fake, world, sub: str, channel: int, *, user: int | None = None, roles=(),
                     **options) -> str:
    interaction = await fake.slash_command(user or world.mod, options, name="memory", subcommand=sub,
                                           channel_id=channel, roles=roles)
    posted = await answer(fake, interaction)
    assert posted.ephemeral
    return posted.content


async def post_image(fake, user: int, channel: int, picture: bytes, text: str = "", roles=()) -> dict:
    attachment = fake.upload("photo.jpg", picture, "image/jpeg", channel_id=channel)
    message = fake.user_message(user, text, attachments=[attachment], channel_id=channel, roles=roles)
    await fake.send_message(message)
    return message


async def search(fake, user: int, channel: int, options: dict, *, roles=(), dm: bool = False,
                 attachments: dict | None = None) -> Posted:
    interaction = await fake.slash_command(user, options, channel_id=channel, roles=roles, dm=dm,
                                           attachments=attachments)
    return await answer(fake, interaction)


def remembered(posted: Posted) -> list[str]:
    """The message links of the channel-memory results shown, in order."""
    links = []
    for embed in posted.embeds:
        if "Posted by" in (embed.get("description") or ""):
            links.append(embed["url"])
    return links


def link_of(fake: FakeDiscord, message: dict) -> str:
    return f"https://discord.com/channels/{message['guild_id']}/{message['channel_id']}/{message['id']}"


def count(runner: Runner, guild: int, channel: int | None = None) -> int:
    memory = runner.service.channel_memory
    return memory.store.count(Tenant("discord", str(guild)), None if channel is None else str(channel))


# --------------------------------------------------------------------------- tests


async def test_an_image_posted_is_found_by_text_image_and_voice_with_its_link_until_deleted(fake, runner, world):
    channel = await world.channel()
    refused = await memory_cmd(fake, world, "on", channel, user=world.member)
    assert refused == NEEDS_MANAGE_CHANNELS[:1].upper() + NEEDS_MANAGE_CHANNELS[1:]
    before = await post_image(fake, world.member, channel, make_picture(40))  # memory still off
    said = await memory_cmd(fake, world, "on", channel, roles=(world.mods,))
    assert "Memory is on" in said
    picture = make_picture(41)
    message = await post_image(fake, world.member, channel, picture, "the whiteboard after standup")
    await until(lambda: count(runner, world.guild_a, channel) == 1)
    assert before["id"] not in {h for h in runner.service.channel_memory.store.search(
        Tenant("discord", str(world.guild_a)), runner.service.store.embeddings_at([0])[0], 5, channels=None)[0]}
    link = link_of(fake, message)

    by_text = await search(fake, world.member, channel, {"query": "whiteboard", "source": "memory",
                                                          "filter": "whiteboard"})
    assert remembered(by_text) == [link]
    embed = by_text.embeds[0]
    assert f"<@{world.member}>" in embed["description"] and f"<#{channel}>" in embed["description"]
    assert "<t:" in embed["description"] and by_text.files  # the thumbnail is uploaded

    again = fake.upload("query.jpg", picture, "image/jpeg", channel_id=channel)
    by_image = await search(fake, world.member, channel, {"source": "both"}, attachments={"image": again})
    assert remembered(by_image)[:1] == [link] and by_image.embeds[0]["title"].endswith("score 1.000")
    assert len(by_image.embeds) == 5  # memory and the collection, merged by score

    voice = fake.upload("voice-message.ogg", SPOKEN.read(), "audio/ogg", voice=True, channel_id=channel)
    by_voice = await search(fake, world.member, channel, {"source": "memory"}, attachments={"audio": voice})
    assert remembered(by_voice) == [link] and "heard: " in by_voice.content

    await fake.delete_message(message)
    await until(lambda: count(runner, world.guild_a, channel) == 0)
    gone = await search(fake, world.member, channel, {"query": "whiteboard", "source": "memory"})
    assert remembered(gone) == [] and "Nothing found" in gone.content


async def test_backfill_reads_30_past_messages_in_pages_and_reports_progress(fake, runner, world, monkeypatch):
    monkeypatch.setattr(discord_memory, "HISTORY_PAGE", 8)  # several pages, each saved as progress
    channel = await world.channel()
    oldest = [await post_image(fake, world.member, channel, make_picture(60 + i)) for i in range(5)]
    newest = []
    for i in range(30):
        attachment = fake.upload("old.jpg", make_picture(100 + i), "image/jpeg", channel_id=channel)
        newest.append(fake.user_message(world.member, f"old {i}", attachments=[attachment], channel_id=channel))
    fake.rate_limit_once("GET", rf"/channels/{channel}/messages", 0.05)  # discord.py waits it out
    said = await memory_cmd(fake, world, "on", channel, roles=(world.mods,), backfill=30)
    assert "Memory is on" in said
    await until(lambda: count(runner, world.guild_a, channel) == 30)
    status = await memory_cmd(fake, world, "status", channel, user=world.member)
    assert "Backfill done: 30 past messages read, 30 images remembered." in status
    assert "30 images remembered here" in status
    pages = fake.calls_to("GET", rf"/channels/{channel}/messages$")
    assert len(pages) >= 4 and all(int(c.query["limit"]) <= 8 for c in pages)
    store = runner.service.channel_memory.store
    kept = {i for i in store._snapshot(Tenant("discord", str(world.guild_a))).messages}
    assert {m["id"] for m in newest} <= kept and not {m["id"] for m in oldest} & kept


async def test_server_b_never_sees_server_a(fake, runner, world):
    channel_a = await world.channel()
    await memory_cmd(fake, world, "on", channel_a, roles=(world.mods,))
    picture = make_picture(200)
    in_a = await post_image(fake, world.member, channel_a, picture)
    await until(lambda: count(runner, world.guild_a, channel_a) == 1)
    said = await memory_cmd(fake, world, "on", world.channel_b, roles=(world.mods_b,))
    assert "Memory is on" in said
    in_b = await post_image(fake, world.member, world.channel_b, make_picture(201))
    await until(lambda: count(runner, world.guild_b) == 1)

    query = fake.upload("query.jpg", picture, "image/jpeg", channel_id=world.channel_b)
    from_b = await search(fake, world.member, world.channel_b, {"source": "memory"}, attachments={"image": query})
    assert remembered(from_b) == [link_of(fake, in_b)]
    both = await search(fake, world.member, world.channel_b, {"source": "both", "limit": 10},
                        attachments={"image": fake.upload("q.jpg", picture, "image/jpeg", channel_id=world.channel_b)})
    assert link_of(fake, in_a) not in remembered(both)
    from_a = await search(fake, world.member, channel_a, {"source": "memory"},
                          attachments={"image": fake.upload("q.jpg", picture, "image/jpeg", channel_id=channel_a)})
    assert link_of(fake, in_a) in remembered(from_a) and link_of(fake, in_b) not in remembered(from_a)


async def test_a_private_channel_is_searched_only_by_members_who_can_read_it(fake, runner, world):
    public = await world.channel()
    refused = await memory_cmd(fake, world, "on", world.private, roles=(world.mods,))  # cannot even see it
    assert "Manage Channels" in refused
    await memory_cmd(fake, world, "on", world.private, roles=(world.mods, world.insiders))
    await memory_cmd(fake, world, "on", public, roles=(world.mods,))
    secret = make_picture(300)
    hidden = await post_image(fake, world.mod, world.private, secret, roles=(world.insiders,))
    shown = await post_image(fake, world.mod, public, make_picture(301))
    await until(lambda: count(runner, world.guild_a, world.private) == 1 and count(runner, world.guild_a, public) == 1)

    def query(channel):
        return {"image": fake.upload("q.jpg", secret, "image/jpeg", channel_id=channel)}

    outsider = await search(fake, world.outsider, public, {"source": "memory", "limit": 10}, attachments=query(public))
    assert link_of(fake, hidden) not in remembered(outsider) and len(remembered(outsider)) == 10  # a full page
    insider = await search(fake, world.member, public, {"source": "memory", "limit": 10},
                           attachments=query(public), roles=(world.insiders,))
    assert remembered(insider)[0] == link_of(fake, hidden)
    here = await search(fake, world.member, public, {"source": "memory", "in": "this channel", "limit": 10},
                        attachments=query(public), roles=(world.insiders,))
    assert link_of(fake, hidden) not in remembered(here) and link_of(fake, shown) in remembered(here)

    # "More like this" on the insider's result, pressed by the outsider: only what the outsider may read
    more_id = next(i for i in insider.custom_ids() if i.startswith("sa:mem:"))
    pressed = await fake.click(world.outsider, insider, more_id)
    refusal = await answer(fake, pressed)
    assert refusal.ephemeral and "no longer remembered" in refusal.content
    by_insider = await answer(fake, await fake.click(world.member, insider, more_id, roles=(world.insiders,)))
    assert remembered(by_insider)[0] == link_of(fake, hidden)


async def test_forget_mine_then_forget_the_channel_then_the_server(fake, runner, world):
    channel = await world.channel()
    await memory_cmd(fake, world, "on", channel, roles=(world.mods,))
    author, other = fake.snowflake(), fake.snowflake()
    for seed in (400, 401):
        await post_image(fake, author, channel, make_picture(seed))
    await post_image(fake, other, channel, make_picture(402))
    await until(lambda: count(runner, world.guild_a, channel) == 3)

    said = await memory_cmd(fake, world, "forget-mine", channel, user=author)
    assert "the 2 images you posted" in said and count(runner, world.guild_a, channel) == 1
    refused = await memory_cmd(fake, world, "forget", channel, user=other)
    assert "Manage Channels" in refused and count(runner, world.guild_a, channel) == 1
    said = await memory_cmd(fake, world, "forget", channel, roles=(world.mods,))
    assert "1 images of this channel" in said and count(runner, world.guild_a, channel) == 0
    assert not runner.service.channel_memory.is_on(Tenant("discord", str(world.guild_a)), str(channel))

    refused = await memory_cmd(fake, world, "forget", channel, roles=(world.mods,), scope="server")
    assert refused == NEEDS_MANAGE_SERVER[:1].upper() + NEEDS_MANAGE_SERVER[1:]


async def test_an_edit_that_removes_the_image_and_a_deleted_channel_forget_them(fake, runner, world):
    channel = await world.channel()
    await memory_cmd(fake, world, "on", channel, roles=(world.mods,))
    first = fake.upload("a.jpg", make_picture(500), "image/jpeg", channel_id=channel)
    second = fake.upload("b.jpg", make_picture(501), "image/jpeg", channel_id=channel)
    message = fake.user_message(world.member, "two", attachments=[first, second], channel_id=channel)
    await fake.send_message(message)
    await until(lambda: count(runner, world.guild_a, channel) == 2)
    await fake.edit_message(message, attachments=[second])
    await until(lambda: count(runner, world.guild_a, channel) == 1)
    await fake.delete_channel(channel)
    await until(lambda: count(runner, world.guild_a, channel) == 0)
    assert not runner.service.channel_memory.channels_with_memory(Tenant("discord", str(world.guild_a))) & {str(channel)}


async def test_a_dm_searches_only_the_shared_collection(fake, runner, world):
    user = fake.snowflake()
    posted = await search(fake, user, 0, {"query": "anything", "source": "both", "limit": 10}, dm=True)
    assert posted.embeds and remembered(posted) == []  # memory exists (other tests), none of it here
    memory_only = await search(fake, user, 0, {"query": "anything", "source": "memory"}, dm=True)
    assert memory_only.ephemeral and "DMs search the shared collection" in memory_only.content


async def test_the_bot_removed_from_a_server_forgets_it(fake, runner, world):
    if count(runner, world.guild_b) == 0:
        await memory_cmd(fake, world, "on", world.channel_b, roles=(world.mods_b,))
        await post_image(fake, world.member, world.channel_b, make_picture(600))
        await until(lambda: count(runner, world.guild_b) == 1)
    path = runner.service.channel_memory.store.path_of(Tenant("discord", str(world.guild_b)))
    assert path.exists()
    await fake.remove_guild(world.guild_b)
    await until(lambda: not path.exists())
    assert runner.service.channel_memory.channels_on(Tenant("discord", str(world.guild_b))) == set()


async def test_memory_asks_for_message_content_and_names_the_switch_when_refused(fake, runner, settings):
    assert fake.identifies[-1]["intents"] & discord.Intents(message_content=True).value
    fake.message_content_enabled = False
    no_ops = Settings.model_validate({**settings.model_dump(), "ops": {"health_port": 0}})
    try:
        with pytest.raises(ConfigError) as refused:
            await asyncio.wait_for(serve_discord(no_ops, runner.service, TOKEN, guild_ready_timeout=0.05), 20)
    finally:
        fake.message_content_enabled = True
    assert str(refused.value) == MEMORY_INTENT_REFUSED and "[memory] enabled = false" in MEMORY_INTENT_REFUSED


async def test_a_backfill_interrupted_by_a_restart_resumes_from_its_cursor(fake, runner, world):
    channel = await world.channel()
    posted = []
    for i in range(6):
        attachment = fake.upload("old.jpg", make_picture(700 + i), "image/jpeg", channel_id=channel)
        posted.append(fake.user_message(world.member, "", attachments=[attachment], channel_id=channel))
    memory = runner.service.channel_memory
    tenant = Tenant("discord", str(world.guild_a))
    await memory.enable(tenant, channel=str(channel), by="mod", backfill=5)
    # as a process stopped after its first page left it: 2 messages read, the cursor at the older
    progress = memory.backfill(tenant, str(channel))
    await memory.save_backfill(tenant, str(channel), dataclasses.replace(progress, read=2, cursor=posted[4]["id"]))
    await runner.bot.memory_cog.on_ready()  # what the bot does when it (re)connects
    await until(lambda: (memory.backfill(tenant, str(channel)) or progress).finished)
    done = memory.backfill(tenant, str(channel))
    assert (done.read, done.indexed) == (5, 3)  # messages 3, 2, 1 (older than the cursor), not 0
    snap = memory.store._snapshot(tenant)
    kept = {snap.messages[r] for r in snap.rows_where(channel=str(channel), message=None, author=None, items=None)}
    assert kept == {posted[i]["id"] for i in (1, 2, 3)}


async def test_memory_commands_pass_the_same_allow_lists_as_searches(fake, runner, world, settings):
    cog = runner.bot.cog
    saved = cog.settings
    only_b = {**settings.discord.model_dump(), "allowed_channels": [world.channel_b]}
    cog.settings = Settings.model_validate({**settings.model_dump(), "discord": only_b})
    try:
        channel = await world.channel()
        said = await memory_cmd(fake, world, "on", channel, roles=(world.mods,))
    finally:
        cog.settings = saved
    assert said == "Searching is not enabled in this channel"
    assert not runner.service.channel_memory.is_on(Tenant("discord", str(world.guild_a)), str(channel))
