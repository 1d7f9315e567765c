"""The platform-neutral bot layer: inputs, downloads, replies, buttons, rate limit, messages."""

import asyncio

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from bot.common.downloads import ForbiddenHostError, download, host_allowed
from bot.common.handle import (
    Admission,
    Attachment,
    PageSize,
    RateLimitedError,
    RateLimiter,
    build_query,
    check_attachment_count,
    page_size,
    user_message,
)
from bot.common.reply import MoreLikeThis, NextPage, build_reply, decode_action, shorten
from core.config import MediaLimits, Settings
from core.errors import BadInputError, EmptyQueryError, MediaTooLargeError
from core.media.kinds import media_kind
from core.service import ResultItem, SearchResult
from tests.fakes.loopback import serve_on_loopback

# ----- buttons ---------------------------------------------------------------------------------

@given(st.integers(0, 10**12 - 1), st.integers(1, 999_999))
def test_more_like_this_ids_round_trip(row, rank):
    encoded = MoreLikeThis(row, rank).encode()
    assert len(encoded) <= 100 and decode_action(encoded) == MoreLikeThis(row, rank)


def test_more_like_this_ids_of_messages_posted_before_the_rank_still_work():
    """#20 item 10: ids carry the rank clicked now; an old message's id has only the row."""
    assert MoreLikeThis(7, 12).encode() == "sa:more:7:12"
    assert decode_action("sa:more:7") == MoreLikeThis(7) and MoreLikeThis(7).rank is None
    assert MoreLikeThis(7).encode() == "sa:more:7"


@given(st.text("0123456789abcdef", min_size=8, max_size=40), st.integers(0, 999_999))
def test_next_page_ids_round_trip(key, offset):
    encoded = NextPage(key, offset).encode()
    assert len(encoded) <= 100 and decode_action(encoded) == NextPage(key, offset)


@pytest.mark.parametrize("custom_id", ["", "sa:more:", "sa:more:-1", "sa:page:xyz:1", "other:1", "sa:more:1 ",
                                       "sa:more:1:0", "sa:more:1:", "sa:more:1:1234567", "sa:more:1:2:3"])
def test_foreign_or_malformed_ids_are_not_actions(custom_id):
    assert decode_action(custom_id) is None


# ----- replies -----------------------------------------------------------------------------------

def item(row: int, score: float, text: str = "", similar: int = 0) -> ResultItem:
    return ResultItem(id=f"i{row}", score=score, text=text, url=None, row=row, width=1, height=1, similar=similar)


def result(items, *, offset=0, limit=5, best=None, cutoff=-1.0, has_more=False, heard="") -> SearchResult:
    best = best if best is not None else (items[0].score if items else None)
    return SearchResult(
        description="cat + dog", items=items, best_score=best, cutoff=cutoff, offset=offset,
        limit=limit, has_more=has_more, page_key="abcdef0123456789abcd", heard=heard,
    )


def test_a_reply_numbers_results_across_pages_and_offers_the_next_page():
    reply = build_reply(result([item(4, 0.31, "a " * 300, similar=2), item(9, 0.2)], offset=5, limit=2,
                               has_more=True))
    assert reply.header == "Results 6-7 for: cat + dog"
    assert [i.rank for i in reply.images] == [6, 7]
    assert reply.images[0].score == "0.310" and reply.images[0].similar == "+2 similar"
    assert reply.images[0].more == MoreLikeThis(4, 6) and len(reply.images[0].caption) <= 200
    assert reply.images[1].more.encode() == "sa:more:9:7"  # the rank as seen, across pages
    assert reply.next_page == NextPage("abcdef0123456789abcd", 7) and reply.notice == ""


def test_a_page_smaller_than_asked_says_so_in_the_same_words_everywhere():
    """#20 item 11: a limit over what a page holds was clamped without a word."""
    assert page_size(None, default=5, most=10) == PageSize(5)
    assert page_size(10, default=5, most=10) == PageSize(10)
    told = page_size(50, default=5, most=10)
    assert told == PageSize(10, "Showing 10 results per page, not 50: a page holds at most 10.")
    with pytest.raises(BadInputError, match="1 or more, not 0"):
        page_size(0, default=5, most=10)
    with pytest.raises(BadInputError, match="1 or more, not -3"):
        page_size(-3, default=5, most=10)
    # A chat app's page holds at most what one message shows, as well as [search] max_limit.
    admission = Admission(Settings.model_validate({"search": {"max_limit": 40}}), per_message=15)
    assert admission.page_size(20) == PageSize(15, "Showing 15 results per page, not 20: a page holds at most 15.")
    assert admission.limit(20) == 15
    reply = build_reply(told.told(result([item(1, 0.5)])))
    assert reply.notes == (told.note,)
    assert reply.summary_lines() == ["Result 1 for: cat + dog", told.note]
    assert build_reply(PageSize(5).told(result([item(1, 0.5)]))).notes == ()


def test_no_good_match_names_the_best_score_and_the_cut_off():
    reply = build_reply(result([], best=0.123, cutoff=0.2))
    assert reply.images == [] and reply.next_page is None
    assert "best score was 0.123" in reply.notice and "0.20" in reply.notice


def test_a_page_at_the_depth_limit_says_so_and_offers_no_next_page():
    """Issue 17, item 4: results go only so deep; the reply says so instead of a "Next page"."""
    at_cap = SearchResult(
        description="cat", items=[item(7, 0.4)], best_score=0.4, cutoff=-1.0, offset=495, limit=5,
        has_more=False, page_key="abcdef0123456789abcd", at_depth_limit=True,
    )
    reply = build_reply(at_cap)
    assert reply.next_page is None and len(reply.images) == 1
    assert "as deep as the results go" in reply.notice and "refine the search" in reply.notice
    past = SearchResult(
        description="cat", items=[], best_score=None, cutoff=-1.0, offset=19_990, limit=10,
        has_more=False, page_key="abcdef0123456789abcd", at_depth_limit=True,
    )
    assert "as deep as the results go" in build_reply(past).notice and build_reply(past).next_page is None


def test_nothing_found_and_heard():
    assert "Nothing found" in build_reply(result([])).notice
    assert build_reply(result([item(1, 0.5)], heard="a red car")).heard == "heard: a red car"


def test_shorten_cuts_at_a_word_and_marks_it():
    assert shorten("a  b\nc", 10) == "a b c"
    short = shorten("alpha beta gamma delta", 12)
    assert short.endswith("…") and len(short) <= 12 and short.startswith("alpha beta")


# ----- rate limit ------------------------------------------------------------------------------

def test_rate_limit_allows_a_burst_then_refills():
    now = [0.0]
    limiter = RateLimiter(per_minute=6, burst=2, clock=lambda: now[0])
    limiter.check("u1")
    limiter.check("u1")
    with pytest.raises(RateLimitedError) as caught:
        limiter.check("u1")
    assert caught.value.retry_after == pytest.approx(10.0)
    assert "try again in 10 s" in str(caught.value)
    limiter.check("u2")  # another user is not affected
    now[0] = 10.0
    limiter.check("u1")


# ----- inputs ----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("name", "mime", "kind"),
    [("a.png", "image/png", "image"), ("voice-message.ogg", "audio/ogg", "audio"),
     ("clip.mp4", "video/mp4", "audio"), ("x.JPG", None, "image"), ("audio_message.m4a", "", "audio"),
     ("notes.txt", "text/plain", None), ("x.bin", "application/octet-stream", None)],
)
def test_media_kind(name, mime, kind):
    assert media_kind(name, mime) == kind


def test_build_query_combines_text_filters_and_attachments():
    limits = MediaLimits()
    query = build_query(
        'castle - fog filter:watercolor -filter:"low quality"',
        [Attachment("image", b"img", "a.png"), Attachment("audio", b"snd", "v.ogg", transcript="hello")],
        limits=limits, limit=3,
    )
    assert [(t.modality, t.weight) for t in query.terms] == [
        ("text", 1.0), ("text", -1.0), ("image", 1.0), ("audio", 1.0)]
    assert query.include == ("watercolor",) and query.exclude == ("low quality",)
    assert query.terms[3].transcript == "hello" and query.limit == 3
    with pytest.raises(EmptyQueryError):
        build_query("  ", [], limits=limits, limit=3)
    with pytest.raises(BadInputError, match="11 files attached; at most 4"):
        check_attachment_count(11, 4)


# ----- downloads -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("url", "ok"),
    [("https://cdn.example.com/a.png", True), ("http://127.0.0.1:8080/x", True),
     ("http://127.0.0.1:9999/x", False), ("https://evil.com/cdn.example.com", False),
     ("https://cdn.example.com.evil.com/a", False), ("ftp://cdn.example.com/a", False),
     ("file:///etc/passwd", False)],
)
def test_host_allow_list(url, ok):
    assert host_allowed(url, ["cdn.example.com", "127.0.0.1:8080"]) is ok


@pytest.fixture
async def file_server():
    state = {"bytes_sent": 0}

    async def small(request):
        return web.Response(body=b"x" * 1000, content_type="image/png")

    async def huge_undeclared(request):
        response = web.StreamResponse(headers={"Content-Type": "audio/ogg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            for _ in range(200):  # 12.8 MB offered; the client must stop long before
                await response.write(b"y" * 65536)
                state["bytes_sent"] += 65536
        except (ConnectionResetError, RuntimeError):
            pass
        return response

    async def declared(request):
        return web.Response(body=b"z" * 5000, content_type="image/png")

    async def html(request):
        return web.Response(text="<html>sign in</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/small.png", small)
    app.router.add_get("/huge.ogg", huge_undeclared)
    app.router.add_get("/declared.png", declared)
    app.router.add_get("/login", html)
    runner, port = await serve_on_loopback(app)
    yield f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", state
    await runner.cleanup()


async def test_download_caps_while_streaming_and_refuses_foreign_hosts(file_server):
    base, host, state = file_server
    async with aiohttp.ClientSession() as session:
        data, mime = await download(session, f"{base}/small.png", allowed_hosts=[host], max_bytes=4096)
        assert data == b"x" * 1000 and mime == "image/png"
        with pytest.raises(MediaTooLargeError, match="limit of 4 kB"):
            await download(session, f"{base}/huge.ogg", allowed_hosts=[host], max_bytes=4096)
        with pytest.raises(MediaTooLargeError, match="5 kB; the limit is 4 kB"):
            await download(session, f"{base}/declared.png", allowed_hosts=[host], max_bytes=4096)
        with pytest.raises(BadInputError, match="web page"):
            await download(session, f"{base}/login", allowed_hosts=[host], max_bytes=4096)
        with pytest.raises(ForbiddenHostError):
            await download(session, f"{base}/small.png", allowed_hosts=["cdn.example.com"], max_bytes=4096)
    await asyncio.sleep(0)  # let the server notice the closed connection
    assert state["bytes_sent"] < 200 * 65536


# ----- messages --------------------------------------------------------------------------------

def test_user_messages(caplog):
    assert user_message(BadInputError("file x is broken")) == "File x is broken"
    assert user_message(BadInputError("photo.png is 30 MB")) == "photo.png is 30 MB"
    text = user_message(ZeroDivisionError("oops"))
    assert "incident" in text and "oops" not in text
    assert "ZeroDivisionError" in caplog.text
