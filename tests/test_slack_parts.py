"""The Slack bot's pure parts: Block Kit rendering, the typed text, file objects, event dedupe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.common.handle import PageSize
from bot.common.reply import MoreLikeThis, NextPage, build_reply, decode_action
from bot.slack.app import COMMAND, EVENTS_PATH
from bot.slack.dedupe import RecentKeys
from bot.slack.files import SlackFile
from bot.slack.memory import COMMAND as MEMORY_COMMAND
from bot.slack.render import (
    IN_THREAD,
    MAX_BLOCKS,
    MAX_RESULTS,
    fallback_text,
    needs_upload,
    render_blocks,
)
from bot.slack.text import query_text, split_limit
from core.errors import QuerySyntaxError
from core.service import ResultItem, SearchResult


def result(
    urls: list[str | None], *, offset: int = 0, has_more: bool = True, heard: str = ""
) -> SearchResult:
    items = [
        ResultItem(
            id=f"i{n}",
            score=0.5 - n / 100,
            text=f"prompt <{n}> & more",
            url=url,
            row=100 + n,
            width=64,
            height=48,
            similar=n % 2,
        )
        for n, url in enumerate(urls)
    ]
    return SearchResult(
        "cat + cartoon",
        items,
        items[0].score if items else None,
        -1.0,
        offset,
        len(urls),
        has_more,
        "0123456789abcdef0123",
        heard=heard,
    )


def test_results_with_web_urls_become_image_blocks_and_others_are_marked_for_the_thread():
    reply = build_reply(result(["https://img.example/a.jpg", "file:///data/b.jpg", None]))
    blocks = render_blocks(reply)
    assert [b["image_url"] for b in blocks if b["type"] == "image"] == ["https://img.example/a.jpg"]
    assert [needs_upload(image) for image in reply.images] == [False, True, True]
    contexts = [b for b in blocks if b["type"] == "context"]
    assert [IN_THREAD in c["elements"][0]["text"] for c in contexts] == [False, True, True]
    assert [c["elements"][1]["text"] for c in contexts] == [i.caption for i in reply.images]  # plain text
    assert "+1 similar" in contexts[1]["elements"][0]["text"]


def test_every_button_carries_an_action_that_decodes_back():
    reply = build_reply(result(["https://img.example/a.jpg", None], offset=10))
    buttons = [e for b in render_blocks(reply) if b["type"] == "actions" for e in b["elements"]]
    assert all(b["action_id"] == b["value"] for b in buttons)
    assert [decode_action(b["value"]) for b in buttons] == [
        MoreLikeThis(100, 11),
        MoreLikeThis(101, 12),
        NextPage("0123456789abcdef0123", 12),
    ]
    assert [b["text"]["text"] for b in buttons] == ["More like #11", "More like #12", "Next page"]


def test_header_heard_and_requester_and_markup_escaped():
    blocks = render_blocks(build_reply(result([None], heard="a <red> car")), requested_by="U123")
    assert blocks[0]["text"]["text"] == "*Result 1 for: cat + cartoon*\n_heard: a &lt;red&gt; car_"
    assert "<@U123>" in json.dumps(blocks[1])


def test_notes_go_under_the_header_escaped():
    told = PageSize(1, "Showing 1 results per page, not <2>: a page holds at most 1.").told(result([None]))
    blocks = render_blocks(build_reply(told))
    assert blocks[0]["text"]["text"].splitlines()[1] == "Showing 1 results per page, not &lt;2&gt;: a page holds at most 1."
    assert fallback_text(build_reply(told)).splitlines()[1].startswith("Showing 1 results")


def test_a_full_page_fits_in_one_message():
    blocks = render_blocks(build_reply(result([None] * MAX_RESULTS, heard="x")), requested_by="U1")
    assert len(blocks) <= MAX_BLOCKS


def test_an_empty_page_says_why():
    empty = SearchResult("cat", [], 0.1, 0.2, 0, 5, False, "0123456789abcdef0123")
    blocks = render_blocks(build_reply(empty))
    assert "No good match" in blocks[1]["text"]["text"]
    assert not any(b["type"] == "actions" for b in blocks)


def test_typed_text_loses_mentions_and_escapes_and_gives_its_limit():
    assert query_text("<@U0BOT> cat &amp; dog \u201cred car\u201d") == 'cat & dog "red car"'
    assert split_limit("castle limit:7 filter:old") == ("castle   filter:old", 7)
    assert split_limit("castle") == ("castle", None)
    assert split_limit("speed-limit:9") == ("speed-limit:9", None)
    # "²" and "٣" pass str.isdigit(); only ASCII digits are a number here.
    for bad in ("cat limit:x", "cat limit:0", "limit:2 cat limit:3", "cat limit:\u00b2", "cat limit:\u0663"):
        with pytest.raises(QuerySyntaxError, match="limit"):
            split_limit(bad)
    # A number too long for int() is as many as a message shows (the caller clamps it).
    text, limit = split_limit("cat limit:" + "9" * 5000)
    assert text == "cat" and limit is not None and limit >= 10**6


def test_slack_audio_clips_are_audio_whatever_their_mimetype_and_carry_slacks_transcript():
    clip = SlackFile.from_event(
        {
            "id": "F1",
            "name": "audio_message.mp4",
            "mimetype": "video/quicktime",
            "subtype": "slack_audio",
            "url_private": "https://files.slack.com/x",
            "transcription": {"status": "complete", "preview": {"content": " hello  there "}},
        }
    )
    assert clip.kind == "audio" and clip.transcript == "hello there"
    unknown = SlackFile.from_event({"id": "F2", "name": "clip.bin", "mimetype": "application/octet-stream"})
    assert unknown.kind is None and unknown.transcript is None and unknown.url is None
    pending = SlackFile.from_event({"id": "F3", "name": "a.m4a", "transcription": {"status": "processing"}})
    assert pending.kind == "audio" and pending.transcript is None


def test_recent_event_ids_are_remembered_for_the_ttl_and_bounded():
    now = [0.0]
    keys = RecentKeys(ttl_s=60, max_keys=3, clock=lambda: now[0])
    assert keys.first_time("Ev1") and not keys.first_time("Ev1")
    now[0] = 61.0
    assert keys.first_time("Ev1")  # forgotten after the TTL
    for key in ("Ev2", "Ev3", "Ev4"):
        assert keys.first_time(key)
    assert keys.first_time("Ev1")  # pushed out by newer ids: at most 3 kept


def test_the_manifest_points_slack_at_the_bots_command_and_endpoint():
    yaml = pytest.importorskip("yaml")
    manifest = yaml.safe_load((Path(__file__).parents[1] / "docs" / "slack-manifest.yaml").read_text())
    command, memory_command = manifest["features"]["slash_commands"]
    settings = manifest["settings"]
    assert (command["command"], memory_command["command"]) == (COMMAND, MEMORY_COMMAND)
    urls = [
        command["url"],
        memory_command["url"],
        settings["event_subscriptions"]["request_url"],
        settings["interactivity"]["request_url"],
    ]
    assert all(url.endswith(EVENTS_PATH) for url in urls)
    # Channel memory's events (bot/slack/memory.py), and the history and membership scopes.
    assert set(settings["event_subscriptions"]["bot_events"]) == {
        "app_mention", "message.im", "message.channels", "message.groups", "file_deleted", "channel_deleted",
        "group_deleted", "member_left_channel", "member_joined_channel", "app_uninstalled", "tokens_revoked",
    }
    assert {"channels:history", "groups:history", "channels:read", "groups:read", "users:read", "files:read"} <= set(
        manifest["oauth_config"]["scopes"]["bot"])
    assert manifest["features"]["app_home"]["messages_tab_read_only_enabled"] is False  # DMs allowed
