"""Channel memory on Slack end to end (issue #18): the real Bolt app over signed HTTP requests,
against the local Slack server (tests/fakes/slack.py, with channels, members and history from
tests/fakes/slack_directory.py), channel memory on disk with the tiny model.

Expectations are computed with the same SearchService and scope the bot uses; assertions are
on the Web API calls and the `response_url` posts the fake recorded. `bot.drain()` waits for
the work the listeners started (indexing, forgetting, backfills, answers).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from bot.common.reply import MoreLikeRemembered, decode_action
from bot.slack.app import EVENTS_PATH, SlackBot, running_slack_bot
from bot.slack.memory import read_options
from bot.slack.oauth import INSTALL_PATH
from core.config import Secrets, Settings
from core.errors import QuerySyntaxError
from core.memory.model import SearchScope, Tenant
from core.query import Query, Term
from core.service import SearchService
from core.startup import open_search_service
from ingest.runner import run_ingest
from tests.fakes.slack import (
    BOT_ID,
    BOT_USER_ID,
    CLIENT_ID,
    CLIENT_SECRET,
    TEAM_ID,
    WAIT_S,
    FakeSlack,
    command_body,
    event_payload,
    message_event,
    signed_headers,
)
from tests.fakes.slack_directory import (
    SlackDirectory,
    app_uninstalled,
    channel_deleted,
    channel_message,
    file_deleted,
    member_left_channel,
    memory_command_body,
    message_changed,
    message_deleted,
)
from tests.media_factory import make_audio, make_picture, picture_folder

BOT_TOKEN = "xoxb-memory-test"
SECRET = "memory-signing-secret"
FORM = "application/x-www-form-urlencoded"
ADMIN, USER, OUTSIDER = "U0ADMIN001", "U0USER0001", "U0OUTSIDE1"
GENERAL, PRIVATE, DESIGN = "C0GENERAL1", "G0PRIVATE1", "C0DESIGN01"
DM = "D0DIRECT01"


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("slack-memory")
    raw = {
        "model": {"name": "tiny", "cache_dir": str(root / "cache")},
        "store": {"dataset": str(root / "dataset")},
        "search": {"collapse_cosine": 1.0, "default_limit": 5, "page_memory_path": str(root / "pages.sqlite")},
        "ops": {"refresh_seconds": 0, "health_port": 0},
    }
    report = run_ingest(Settings.model_validate(raw), f"folder:{picture_folder(root / 'pictures', 6)}",
                        secrets=Secrets(), workers=0, progress=False)
    assert report.summary.added == 6
    return raw


def settings_for(raw: dict[str, Any], fake: FakeSlack, memory_dir: Path, **slack: Any) -> Settings:
    return Settings.model_validate({
        **raw,
        "memory": {"enabled": True, "dir": str(memory_dir), "access_cache_seconds": 60},
        "bot": {"rate_limit_burst": 50},  # a test searches more than a person would
        "slack": {"api_base_url": fake.api_url, "host": "127.0.0.1", "port": 0, "file_hosts": [fake.host], **slack},
    })


@dataclass
class Harness:
    fake: FakeSlack
    directory: SlackDirectory
    bot: SlackBot
    service: SearchService
    http: aiohttp.ClientSession
    events: int = 0

    @property
    def url(self) -> str:
        assert self.bot.address is not None
        return f"http://127.0.0.1:{self.bot.address[1]}{EVENTS_PATH}"

    async def post(self, body: str, content_type: str) -> int:
        headers = {"Content-Type": content_type, **signed_headers(SECRET, body)}
        async with self.http.post(self.url, data=body.encode(), headers=headers) as response:
            await response.read()
            return response.status

    async def memory(self, text: str, *, user: str, channel: str, team: str = TEAM_ID) -> str:
        """`/search-memory <text>`: what the person was told."""
        name = f"mem-{len(self.fake.responses)}-{self.events}"
        self.events += 1
        body = memory_command_body(text, user=user, channel=channel, team=team, response_url=self.fake.response_url(name))
        assert await self.post(body, FORM) == 200
        await self.bot.drain()
        (told,) = [r for r in self.fake.responses if r["_url_id"] == name]
        assert told["response_type"] == "ephemeral"
        return told["text"]

    async def search(self, text: str, *, user: str, channel: str, team: str = TEAM_ID) -> Any:
        """`/search <text>`: the message posted with the results (None when told an error)."""
        before = len(self.fake.calls_to("chat.postMessage"))
        self.events += 1  # a body of its own: the same signed body twice is a replay, not acted on
        body = command_body(text, user=user, channel=channel, team=team,
                            response_url=self.fake.response_url(f"search-{self.events}"))
        assert await self.post(body, FORM) == 200
        await self.bot.drain()
        posted = self.fake.calls_to("chat.postMessage")[before:]
        return posted[0] if posted else None

    async def event(self, event: dict[str, Any], *, team: str = TEAM_ID) -> None:
        self.events += 1
        body = json.dumps(event_payload(event, event_id=f"Ev{self.events:08d}", team=team))
        assert await self.post(body, "application/json") == 200
        await self.bot.drain()

    async def post_image(self, channel: str, *, user: str, seed: int, text: str = "", team: str = TEAM_ID,
                         private: bool = False, count: int = 1) -> dict[str, Any]:
        """Someone posts `count` pictures in `channel`: the message event Slack sends."""
        files = [self.fake.add_file(f"pic{seed}-{i}.png", make_picture(seed + i, "PNG"), "image/png")
                 for i in range(count)]
        message = channel_message(text, user=user, channel=channel, ts=self.directory.next_ts(), files=files,
                                  team=team, private=private)
        await self.event(message, team=team)
        return message


@asynccontextmanager
async def harness(raw: dict[str, Any], tmp_path: Path) -> AsyncIterator[Harness]:
    async with FakeSlack(bot_token=BOT_TOKEN) as fake:
        fake.directory = directory = SlackDirectory()
        settings = settings_for(raw, fake, tmp_path / "memory")
        secrets = Secrets(slack_bot_token=BOT_TOKEN, slack_signing_secret=SECRET)
        async with open_search_service(settings, secrets=secrets, progress=False) as service, \
                running_slack_bot(service, settings, secrets, socket_mode=False) as bot, \
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as http:
            yield Harness(fake, directory, bot, service, http)


# ---------------------------------------------------------------------- reading replies


def blocks_of(call: Any) -> list[dict[str, Any]]:
    blocks = call.params["blocks"]
    return json.loads(blocks) if isinstance(blocks, str) else blocks


def remembered(call: Any) -> list[str]:
    """The ids (`<ts>/<file id>`) of the channel-memory results shown, in order."""
    values = [e["value"] for b in blocks_of(call) if b["type"] == "actions" for e in b["elements"]]
    return [a.item_id for a in map(decode_action, values) if isinstance(a, MoreLikeRemembered)]


def ids_of(message: dict[str, Any]) -> list[str]:
    return [f"{message['ts']}/{f['id']}" for f in message["files"]]


def memory_ids(result: Any) -> list[str]:
    return [item.id for item in result.items if item.memory is not None]


# ---------------------------------------------------------------------- tests


async def test_an_image_posted_where_memory_is_on_is_found_by_text_image_and_voice_with_its_link(raw, tmp_path):
    async with harness(raw, tmp_path) as h:
        h.directory.add_channel(GENERAL, creator=ADMIN, members={ADMIN, USER})
        before = await h.post_image(GENERAL, user=USER, seed=1)  # memory is off: not remembered
        assert "is for workspace owners and admins and the channel's creator" in await h.memory(
            "on", user=USER, channel=GENERAL)
        told = await h.memory("on", user=ADMIN, channel=GENERAL)  # the channel's creator
        assert told.startswith("Memory is on") and "0 images remembered here" in told
        first = await h.post_image(GENERAL, user=USER, seed=2, text="the whiteboard after standup")
        second = await h.post_image(GENERAL, user=ADMIN, seed=3)
        status = await h.memory("status", user=USER, channel=GENERAL)
        assert "Memory is *on*" in status and "2 images remembered here" in status
        tenant = Tenant("slack", TEAM_ID)
        scope = SearchScope("memory", tenant, frozenset({GENERAL}))

        # By text: both images, ranked as the service ranks them, each with its author and link.
        posted = await h.search("a whiteboard source:memory", user=USER, channel=GENERAL)
        expected = await h.service.search(Query((Term("text", "a whiteboard"),), limit=5), scope)
        assert remembered(posted) == memory_ids(expected)
        assert set(remembered(posted)) == set(ids_of(first) + ids_of(second))
        assert ids_of(before)[0] not in remembered(posted)
        shown = json.dumps(blocks_of(posted))
        assert SlackDirectory.permalink(TEAM_ID, GENERAL, first["ts"]) in shown
        assert f"posted by <@{USER}> in <#{GENERAL}>" in shown and f"posted by <@{ADMIN}>" in shown
        # The thumbnails (the copies memory keeps) are uploaded into the reply's thread.
        assert len(h.fake.uploads) == 2
        # `filter:` matches the message's words.
        posted = await h.search("a whiteboard filter:standup source:memory", user=USER, channel=GENERAL)
        assert remembered(posted) == ids_of(first)

        # By image: a mention with the picture second was made of.
        query_file = h.fake.add_file("query.png", make_picture(3, "PNG"), "image/png")
        mention = message_event("app_mention", "<@UBOTSEARCH> source:memory", user=USER, channel=GENERAL,
                                ts=h.directory.next_ts(), files=[query_file])
        calls = len(h.fake.calls_to("chat.postMessage"))
        await h.event(mention)
        posted = h.fake.calls_to("chat.postMessage")[calls]
        assert posted.params["thread_ts"] == mention["ts"]
        expected = await h.service.search(Query((Term("image", make_picture(3, "PNG")),), limit=5), scope)
        assert remembered(posted) == memory_ids(expected) and remembered(posted)[0] == ids_of(second)[0]

        # By a voice note (Slack's transcript is searched as words).
        clip = make_audio("m4a", seconds=1.5)
        voice = h.fake.add_file("audio_message.m4a", clip, "audio/mp4", subtype="slack_audio",
                                transcript="the whiteboard")
        mention = message_event("app_mention", "<@UBOTSEARCH> source:memory", user=USER, channel=GENERAL,
                                ts=h.directory.next_ts(), files=[voice])
        calls = len(h.fake.calls_to("chat.postMessage"))
        await h.event(mention)
        posted = h.fake.calls_to("chat.postMessage")[calls]
        expected = await h.service.search(Query((Term("audio", clip, transcript="the whiteboard"),), limit=5), scope)
        assert "heard: the whiteboard" in blocks_of(posted)[0]["text"]["text"]
        assert remembered(posted) == memory_ids(expected) and len(remembered(posted)) == 2

        # The bot's own uploads (its results) are never remembered; images came with the token.
        assert (await h.service.channel_memory.status(tenant, GENERAL)).images == 2
        assert {g.authorization for g in h.fake.file_gets} == {f"Bearer {BOT_TOKEN}"}


async def test_deleted_messages_removed_files_and_deleted_files_are_forgotten(raw, tmp_path):
    async with harness(raw, tmp_path) as h:
        h.directory.add_channel(GENERAL, creator=ADMIN, members={ADMIN, USER})
        await h.memory("on", user=ADMIN, channel=GENERAL)
        gone = await h.post_image(GENERAL, user=USER, seed=1)
        file_gone = await h.post_image(GENERAL, user=USER, seed=3)
        edited = await h.post_image(GENERAL, user=USER, seed=5, count=2)
        kept = await h.post_image(GENERAL, user=ADMIN, seed=8)
        posted = await h.search("anything source:memory limit:10", user=USER, channel=GENERAL)
        assert len(remembered(posted)) == 5

        await h.event(message_deleted(GENERAL, gone["ts"], gone))
        await h.event(file_deleted(file_gone["files"][0]["id"]))
        dropped, still = edited["files"]
        now = {**edited, "files": [{"id": dropped["id"], "mode": "tombstone"}, still]}
        await h.event(message_changed(GENERAL, edited, now))

        posted = await h.search("anything source:memory limit:10", user=USER, channel=GENERAL)
        assert sorted(remembered(posted)) == sorted([f"{edited['ts']}/{still['id']}", *ids_of(kept)])
        tenant = Tenant("slack", TEAM_ID)
        # forget-mine: the images USER posted, and only those.
        assert "Forgotten: the 1 image you posted" in await h.memory("forget-mine", user=USER, channel=GENERAL)
        posted = await h.search("anything source:memory limit:10", user=USER, channel=GENERAL)
        assert remembered(posted) == ids_of(kept)
        # A deleted channel: everything it remembered.
        await h.event(channel_deleted(GENERAL))
        assert await h.service.channel_memory.tenant_images(tenant) == 0
        assert GENERAL not in h.service.channel_memory.channels_with_memory(tenant)


async def test_a_backfill_reads_30_past_messages_page_by_page_through_rate_limits_and_resumes(raw, tmp_path):
    async with harness(raw, tmp_path) as h:
        h.directory.add_channel(GENERAL, creator=ADMIN, members={ADMIN, USER})
        h.directory.page_cap = 8  # Slack may answer fewer than asked: 30 messages take 4 pages
        history = []
        for i in range(40):  # oldest first; every 5th message has no image, the bot's own are skipped
            ts = h.directory.next_ts()
            if i % 5 == 0:
                message = {"type": "message", "user": USER, "text": f"words {i}", "ts": ts}
            else:
                message = channel_message(f"picture {i}", user=USER, channel=GENERAL, ts=ts,
                                          files=[h.fake.add_file(f"old{i}.png", make_picture(i, "PNG"), "image/png")])
                if i == 39:
                    message = {**message, "user": BOT_USER_ID, "bot_id": BOT_ID}
            history.append(h.directory.post(GENERAL, message))
        for _ in range(3):  # more 429s in a row than the client's own retries
            h.fake.fail_next("conversations.history", 429)

        told = await h.memory("on 30", user=ADMIN, channel=GENERAL)
        assert told.startswith("Memory is on")
        newest = history[-30:]
        wanted = [i for m in newest if m.get("files") and m.get("user") != BOT_USER_ID for i in ids_of(m)]
        status = await h.memory("status", user=USER, channel=GENERAL)
        assert f"Backfill done: 30 past messages read, {len(wanted)} images remembered." in status
        assert len(wanted) == 23
        pages = h.fake.calls_to("conversations.history")
        assert [c.params.get("cursor", "") for c in pages] == ["", "8", "16", "24"]
        assert len([c for c in h.fake.calls if c.method == "conversations.history" and c.status == 429]) == 3
        posted = await h.search("old pictures source:memory limit:10", user=USER, channel=GENERAL)
        assert set(remembered(posted)) <= set(wanted) and len(remembered(posted)) == 10

        # A restart in the middle of a backfill: it goes on from the saved cursor.
        memory = h.service.channel_memory
        tenant = Tenant("slack", TEAM_ID)
        h.directory.add_channel(DESIGN, creator=ADMIN, members={ADMIN})
        for i in range(20):
            h.directory.post(DESIGN, channel_message("", user=ADMIN, channel=DESIGN, ts=h.directory.next_ts(),
                                                     files=[h.fake.add_file(f"d{i}.png", make_picture(i, "PNG"),
                                                                            "image/png")]))
        await memory.enable(tenant, DESIGN, by=ADMIN, backfill=20)
        progress = memory.backfill(tenant, DESIGN)
        assert progress is not None
        await memory.save_backfill(tenant, DESIGN, replace(progress, read=16, indexed=16, cursor="16"))
        calls = len(h.fake.calls_to("conversations.history"))
        h.bot.attach(h.service)  # what `serve_slack` does once the service is open
        await h.bot.drain()
        resumed = h.fake.calls_to("conversations.history")[calls:]
        assert [c.params.get("cursor") for c in resumed] == ["16"] and resumed[0].params["channel"] == DESIGN
        done = memory.backfill(tenant, DESIGN)
        assert done is not None and (done.read, done.indexed, done.finished) == (20, 20, True)
        assert (await memory.status(tenant, DESIGN)).images == 4  # the 4 oldest: the rest were "read before"


async def test_a_private_channels_images_are_found_by_its_members_only_and_only_there(raw, tmp_path):
    async with harness(raw, tmp_path) as h:
        h.directory.add_channel(GENERAL, creator=ADMIN, members={ADMIN, USER, OUTSIDER})
        h.directory.add_channel(PRIVATE, private=True, creator=USER, members={USER, ADMIN})
        h.directory.add_channel(DESIGN, creator=USER, members={ADMIN, USER})  # public, OUTSIDER not in it
        h.directory.add_admin(ADMIN)  # a workspace admin: may turn memory on in a channel USER made
        for channel in (GENERAL, PRIVATE, DESIGN):
            assert (await h.memory("on", user=ADMIN, channel=channel)).startswith("Memory is on")
        in_general = await h.post_image(GENERAL, user=ADMIN, seed=1)
        in_private = await h.post_image(PRIVATE, user=USER, seed=2, private=True)
        in_design = await h.post_image(DESIGN, user=ADMIN, seed=3)

        # A member, in the private channel: its images, and the public channels' they are in.
        posted = await h.search("anything source:memory", user=USER, channel=PRIVATE)
        assert set(remembered(posted)) == set(ids_of(in_general) + ids_of(in_private) + ids_of(in_design))
        # The same member in a public channel: the private images are not shown to its members.
        posted = await h.search("anything source:memory", user=USER, channel=GENERAL)
        assert set(remembered(posted)) == set(ids_of(in_general) + ids_of(in_design))
        posted = await h.search("anything source:memory in:channel", user=USER, channel=GENERAL)
        assert remembered(posted) == ids_of(in_general)
        # Someone in neither the private channel nor #design: never their images.
        posted = await h.search("anything source:memory in:workspace", user=OUTSIDER, channel=GENERAL)
        assert remembered(posted) == ids_of(in_general)
        # Nor by pressing "More like" on a private image, nor by paging a member's search.
        (private_id,) = ids_of(in_private)
        member_search = await h.search("anything source:memory limit:1", user=USER, channel=PRIVATE)
        values = [e["value"] for b in blocks_of(member_search) if b["type"] == "actions" for e in b["elements"]]
        next_page = next(v for v in values if v.startswith("sa:page:"))
        for value in (f"sa:mem:{private_id}", next_page):
            payload = {"type": "block_actions", "team": {"id": TEAM_ID}, "user": {"id": OUTSIDER, "team_id": TEAM_ID},
                       "api_app_id": "A0TEST", "token": "t", "trigger_id": "1.2.3",
                       "container": {"type": "message", "message_ts": "1.1", "channel_id": GENERAL},
                       "channel": {"id": GENERAL}, "message": {"ts": "1.1", "type": "message"},
                       "response_url": "https://hooks.invalid/x",
                       "actions": [{"action_id": value, "value": value, "type": "button", "block_id": "b"}]}
            calls = len(h.fake.calls_to("chat.postMessage"))
            assert await h.post(urlencode({"payload": json.dumps(payload)}), FORM) == 200
            await h.bot.drain()
            for call in h.fake.calls_to("chat.postMessage")[calls:]:
                assert private_id not in remembered(call)
        (told,) = [c for c in h.fake.calls_to("chat.postEphemeral") if c.params["user"] == OUTSIDER]
        assert "no longer remembered (or not in a channel you can read)" in told.params["text"]
        # Memberships are cached ([memory] access_cache_seconds) until Slack says someone left.
        h.directory.channels[DESIGN].members.discard(USER)
        posted = await h.search("anything source:memory in:workspace", user=USER, channel=GENERAL)
        assert ids_of(in_design)[0] in remembered(posted)  # cached a minute
        await h.event(member_left_channel(USER, DESIGN))
        posted = await h.search("anything source:memory in:workspace", user=USER, channel=GENERAL)
        assert remembered(posted) == ids_of(in_general)
        # ... or joined one: OUTSIDER (whose memberships are cached) finds #design's images at once.
        h.directory.channels[DESIGN].members.add(OUTSIDER)
        await h.event(member_left_channel(OUTSIDER, DESIGN, joined=True))
        posted = await h.search("anything source:memory in:workspace", user=OUTSIDER, channel=GENERAL)
        assert set(remembered(posted)) == set(ids_of(in_general) + ids_of(in_design))
        # A DM with the bot searches the shared collection only.
        posted = await h.search("anything", user=USER, channel=DM)
        assert remembered(posted) == [] and posted.params["channel"] == DM
        assert await h.search("anything source:memory", user=USER, channel=DM) is None
        assert h.fake.responses[-1]["text"].startswith("Channel memory is searched in channels, not in direct messages")


def test_search_options_are_taken_out_of_the_query_and_wrong_ones_are_named():
    text, source, where = read_options("a whiteboard source:Memory limit:3 in:channel")
    assert (text.split(), source, where) == (["a", "whiteboard", "limit:3"], "memory", "channel")
    assert read_options("sunset") == ("sunset", None, None)
    with pytest.raises(QuerySyntaxError, match="source:memry is not understood: write source:collection or"):
        read_options("cat source:memry")
    with pytest.raises(QuerySyntaxError, match="give in: once"):
        read_options("cat in:channel in:workspace")


# ---------------------------------------------------------------------- two workspaces (OAuth)

TEAM_A, TEAM_B = "T0AAAAAAA1", "T0BBBBBBB2"
CHANNEL_A, CHANNEL_B = "C0AAAAAAA1", "C0BBBBBBB2"


async def install(fake: FakeSlack, browser: aiohttp.ClientSession, base: str, team: str) -> str:
    """An admin of `team` installs the app through Slack's OAuth flow; its new bot token."""
    fake.approve_next(team)
    async with browser.get(base + INSTALL_PATH, allow_redirects=False) as response:
        authorize = response.headers["Location"]
        cookie = "; ".join(f"{name}={morsel.value}" for name, morsel in response.cookies.items())
    # The install asks for the scopes channel memory needs ([memory] enabled).
    assert {"channels:history", "groups:history", "users:read"} <= set(parse_qs(urlsplit(authorize).query)["scope"][0].split(","))
    async with browser.get(authorize, allow_redirects=False) as response:
        back = response.headers["Location"]
    assert parse_qs(urlsplit(back).query)["code"]
    async with browser.get(back, headers={"Cookie": cookie}) as response:
        assert response.status == 200, await response.text()
    (token,) = fake.token_of(team)
    return token


async def test_two_workspaces_installed_with_oauth_never_see_each_others_images(raw, tmp_path):
    secrets = Secrets(slack_signing_secret=SECRET, slack_client_id=CLIENT_ID, slack_client_secret=CLIENT_SECRET)
    async with FakeSlack(bot_token="xoxb-of-no-one-here") as fake:
        fake.directory = directory = SlackDirectory()
        settings = settings_for(raw, fake, tmp_path / "memory", oauth=True,
                                installations_path=str(tmp_path / "installations.sqlite"),
                                authorize_url=fake.authorize_url)
        async with open_search_service(settings, secrets=secrets, progress=False) as service, \
                running_slack_bot(service, settings, secrets, socket_mode=False) as bot, \
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as http:
            assert bot.address is not None
            base = f"http://127.0.0.1:{bot.address[1]}"
            fake.redirect_url = base + "/slack/oauth_redirect"
            h = Harness(fake, directory, bot, service, http)
            tokens = {team: await install(fake, http, base, team) for team in (TEAM_A, TEAM_B)}
            posts = {}
            for team, channel in ((TEAM_A, CHANNEL_A), (TEAM_B, CHANNEL_B)):
                directory.add_channel(channel, team=team, creator=ADMIN, members={ADMIN, USER})
                assert (await h.memory("on", user=ADMIN, channel=channel, team=team)).startswith("Memory is on")
                posts[team] = await h.post_image(channel, user=USER, seed=4 if team == TEAM_A else 5, team=team)

            # The same people, the same query: each workspace finds its own image only.
            for team, channel in ((TEAM_A, CHANNEL_A), (TEAM_B, CHANNEL_B)):
                posted = await h.search("anything source:memory in:workspace", user=USER, channel=channel, team=team)
                assert remembered(posted) == ids_of(posts[team]) and posted.token == tokens[team]
            # Each image was downloaded with its own workspace's token.
            by_file = {g.path.rsplit("/", 2)[1].split("-")[-1]: g.authorization for g in fake.file_gets}
            for team in (TEAM_A, TEAM_B):
                assert by_file[posts[team]["files"][0]["id"]] == f"Bearer {tokens[team]}"
            # B cannot reach A's image by its id either.
            (a_id,) = ids_of(posts[TEAM_A])
            payload = {"type": "block_actions", "team": {"id": TEAM_B}, "user": {"id": USER, "team_id": TEAM_B},
                       "api_app_id": "A0TEST", "token": "t", "trigger_id": "1.2.3",
                       "container": {"type": "message", "message_ts": "1.1", "channel_id": CHANNEL_B},
                       "channel": {"id": CHANNEL_B}, "message": {"ts": "1.1", "type": "message"},
                       "response_url": "https://hooks.invalid/x",
                       "actions": [{"action_id": f"sa:mem:{a_id}", "value": f"sa:mem:{a_id}", "type": "button",
                                    "block_id": "b"}]}
            calls = len(fake.calls_to("chat.postMessage"))
            assert await h.post(urlencode({"payload": json.dumps(payload)}), FORM) == 200
            await bot.drain()
            assert fake.calls_to("chat.postMessage")[calls:] == []
            # A uninstalls the app: A's memory is erased, B's stays.
            await h.event(app_uninstalled(), team=TEAM_A)
            memory = service.channel_memory
            assert await memory.tenant_images(Tenant("slack", TEAM_A)) == 0
            assert await memory.tenant_images(Tenant("slack", TEAM_B)) == 1
