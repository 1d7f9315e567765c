"""The bad-input corpus (tests/bad_inputs.py) sent to one running Slack bot as direct messages
(text, or files), over signed HTTP, against the local fake Slack (tests/fakes/slack.py).

Each case is answered with an ephemeral message that says what is wrong (or, for the animated
GIF and the silent clip, with the results the service gives), in its own DM channel; after the
whole corpus the same bot still answers a search.
"""

from __future__ import annotations

import aiohttp
import pytest
import pytest_asyncio

from bot.common.handle import Attachment, build_query
from bot.slack.app import running_slack_bot
from core.config import Settings
from core.media.kinds import media_kind
from core.startup import open_search_service
from ingest.runner import run_ingest
from tests.bad_inputs import CASE_IDS, CASES, TOO_MANY_FILES, BadInput, says
from tests.fakes.slack import WAIT_S, FakeSlack, message_event
from tests.media_factory import picture_folder
from tests.test_slack_bot import BOT_TOKEN, SECRETS, Harness, make_settings, result_rows, rows

pytestmark = pytest.mark.asyncio(loop_scope="module")

PICTURES = 8


@pytest.fixture(scope="module")
def raw_settings(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("slack-bad-inputs")
    pictures = picture_folder(root / "pictures", PICTURES)
    raw = {
        "model": {"name": "tiny"},
        "store": {"dataset": str(root / "dataset")},
        "search": {"collapse_cosine": 1.0, "page_memory_path": str(root / "pages.sqlite")},
        "ops": {"refresh_seconds": 0},
    }
    report = run_ingest(Settings.model_validate(raw), f"folder:{pictures}", workers=0, progress=False)
    assert report.summary.added == PICTURES
    return raw


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def h(raw_settings):
    """One fake Slack, one search service, one bot for the whole module."""
    async with FakeSlack(bot_token=BOT_TOKEN) as fake:
        settings = make_settings(raw_settings, fake)
        async with open_search_service(settings, secrets=SECRETS, progress=False) as service:
            async with running_slack_bot(service, settings, SECRETS, socket_mode=False) as bot:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT_S)) as http:
                    yield Harness(fake, bot, service, settings, http)


def answers_in(h: Harness, channel: str) -> list:
    return [c for c in h.fake.calls if c.status == 200 and c.params.get("channel") == channel
            and c.method in ("chat.postMessage", "chat.postEphemeral")]


async def send_dm(h: Harness, number: int, text: str, files: list[dict]) -> tuple[str, str]:
    """A DM in a channel of its own, by a user of its own; returns (channel, user)."""
    channel, user = f"D0BAD{number:05d}", f"U0BAD{number:05d}"
    event = message_event("message", text, user=user, channel=channel, ts=f"1700000100.{number:06d}",
                          files=files)
    assert await h.event(event, f"Ev0BAD{number:05d}") == 200
    await h.fake.wait_for(lambda: answers_in(h, channel))
    return channel, user


def slack_files(h: Harness, case: BadInput) -> list[dict]:
    copies = TOO_MANY_FILES if case.kind == "count" else int(case.kind != "text")
    files = [h.fake.add_file(case.filename, case.data, case.mimetype) for _ in range(copies)]
    for file in files:
        if case.declared_size is not None:
            file["size"] = case.declared_size  # as Slack announces it; the bytes are never fetched
    return files


@pytest.mark.parametrize(("number", "case"), list(enumerate(CASES)), ids=CASE_IDS)
async def test_each_bad_input_gets_a_clear_reply(h, number, case):
    files = slack_files(h, case)
    channel, user = await send_dm(h, number, case.text, files)
    await h.bot.drain()
    (answer,) = answers_in(h, channel)
    if case.searchable:
        assert answer.method == "chat.postMessage"
        attachment = Attachment(media_kind(case.filename, case.mimetype), case.same_as or case.data, case.filename)
        query = build_query("", [attachment], limits=h.settings.limits, limit=h.bot.admission.limit(None))
        expected = await h.service.search(query)
        assert result_rows(answer) == rows(expected) and expected.items
    else:
        assert answer.method == "chat.postEphemeral" and answer.params["user"] == user
        assert says(answer.params["text"], case.expected(h.settings)), answer.params["text"]
    if case.declared_size is not None:
        assert not [g for g in h.fake.file_gets if files[0]["id"] in g.path]


async def test_after_the_corpus_the_bot_still_searches(h):
    channel, _ = await send_dm(h, len(CASES), "a white cloud", [])
    (answer,) = answers_in(h, channel)
    expected = await h.service.search(build_query("a white cloud", [], limits=h.settings.limits,
                                                  limit=h.bot.admission.limit(None)))
    assert answer.method == "chat.postMessage" and result_rows(answer) == rows(expected) and expected.items
