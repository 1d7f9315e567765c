"""The web page end to end in a real headless browser: Debian's chromium driven by Playwright.

The page is served on 127.0.0.1 (port 0) from this test's event loop, over the tiny model and a
small dataset built here. Expected headers, results and messages are computed by asking the
same `SearchService` and `bot.common.reply` directly. No browser is downloaded: Playwright drives the
system chromium (`executable_path`); CI installs it (`.ci/run`).

SEARCH_ALL_SCREENSHOT=1 also copies the screenshot to docs/web-screenshot.png.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import pytest_asyncio

from bot.common.handle import Attachment, build_query, unsupported, user_message
from bot.common.reply import build_reply, decode_action
from bot.web.app import running_web
from core.media.sizes import human_bytes
from core.startup import open_search_service
from tests.media_factory import make_audio, make_picture
from tests.test_web_api import DUPLICATED_SEED, build_dataset, web_settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install chromium)"),
    pytest.mark.asyncio(loop_scope="module"),
]
playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is in the test extra")

REPO = Path(__file__).resolve().parent.parent
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    path = tmp_path_factory.mktemp("web-browser") / "pictures"
    build_dataset(path)
    return web_settings(str(path))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(settings):
    async with open_search_service(settings, progress=False) as service:
        async with running_web(service, settings) as url:
            yield service, url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser():
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # A fake microphone (a beep) that needs no permission prompt: tests recording.
            args=["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"],
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser, site):
    """A fresh page (its own context: no state from other tests) with the search page loaded."""
    _, url = site
    context = await browser.new_context(viewport={"width": 1180, "height": 900})
    try:
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        await page.goto(url)
        await page.wait_for_selector("main[data-state=ready]")
        yield page
    finally:
        await context.close()


async def search_and_wait(page) -> None:
    await page.click("#search")
    await page.wait_for_selector("main[data-state=ready], main[data-state=error]")


async def cards(page) -> list[dict]:
    return await page.eval_on_selector_all(
        "#gallery .card",
        """cards => cards.map(c => ({
            id: c.dataset.id,
            action: c.dataset.action,
            score: c.querySelector('.score').textContent,
            similar: (c.querySelector('.similar') || {textContent: ''}).textContent,
            caption: c.querySelector('.caption').textContent,
            rank: c.querySelector('.rank').textContent,
            loaded: c.querySelector('img').complete && c.querySelector('img').naturalWidth > 0,
        }))""",
    )


def expected_cards(reply) -> list[tuple[str, str, str, str]]:
    return [(i.item.id, i.score, i.similar, i.caption) for i in reply.images]


def seen_cards(found: list[dict]) -> list[tuple[str, str, str, str]]:
    return [(c["id"], c["score"], c["similar"], c["caption"]) for c in found]


async def test_search_with_text_image_and_audio_then_more_like_this(page, site, settings, tmp_path):
    service, _ = site
    text = "a sailing boat + 0.5*watercolor"
    picture, clip = make_picture(DUPLICATED_SEED), make_audio("ogg", 1.0, frequency=330.0)
    await page.fill("#text", text)
    await page.set_input_files("#image", files=[{"name": "query.jpg", "mimeType": "image/jpeg", "buffer": picture}])
    await page.set_input_files("#audio", files=[{"name": "tone.ogg", "mimeType": "audio/ogg", "buffer": clip}])
    await page.wait_for_selector("#image-preview[src^=blob]")
    await search_and_wait(page)

    attachments = [Attachment("image", picture, "query.jpg"), Attachment("audio", clip, "tone.ogg")]
    query = build_query(text, attachments, limits=settings.limits, limit=settings.search.default_limit)
    reply = build_reply(await service.search(query), caption_chars=settings.bot.caption_chars)
    assert await page.text_content("#results-header") == reply.header
    found = await cards(page)
    assert seen_cards(found) == expected_cards(reply) and len(found) == settings.search.default_limit
    assert any(c["similar"] for c in found), "the copies of the query image should fold into one card"
    await page.wait_for_function("[...document.querySelectorAll('#gallery img')].every(i => i.complete)")
    assert all(c["loaded"] for c in await cards(page)), "every result image is served and decodes"
    assert await page.is_visible("#next-page") and not await page.is_visible("#error")

    shot = tmp_path / "web-screenshot.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("SEARCH_ALL_SCREENSHOT"):
        shutil.copyfile(shot, REPO / "docs" / "web-screenshot.png")

    clicked = next(c for c in found[1:] if not c["similar"])
    await page.click(f"#gallery .card[data-id='{clicked['id']}']")
    await page.wait_for_function(
        "header => document.querySelector('#results-header').textContent !== header", arg=reply.header
    )
    await page.wait_for_selector("main[data-state=ready]")
    action = decode_action(clicked["action"])
    assert action.rank == int(clicked["rank"].lstrip("#"))  # #20 item 10: the rank clicked
    more = build_reply(await service.more_like_row(action.row, settings.search.default_limit, rank=action.rank))
    assert await page.text_content("#results-header") == more.header
    after = await cards(page)
    assert seen_cards(after) == expected_cards(more)
    assert after[0]["id"] == clicked["id"] and seen_cards(after) != seen_cards(found)

    await page.click("#next-page")
    await page.wait_for_function("() => document.querySelector('#gallery .rank').textContent !== '#1'")
    ranks = [c["rank"] for c in await cards(page)]
    assert ranks[0] == f"#{settings.search.default_limit + 1}"


async def test_a_text_file_or_a_file_too_large_as_the_image_shows_the_error(page, settings):
    await page.fill("#text", "a mountain lake")
    await page.set_input_files("#image", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hi"}])
    await search_and_wait(page)
    assert await page.get_attribute("main", "data-state") == "error"
    assert await page.is_visible("#error")
    assert await page.text_content("#error") == user_message(unsupported("notes.txt", "text/plain"))

    # A file over the limit is refused on the page, before it is sent.
    size = settings.limits.max_file_bytes + 1
    big = [{"name": "big.jpg", "mimeType": "image/jpeg", "buffer": bytes(size)}]
    await page.set_input_files("#image", files=big)
    expected = f"big.jpg is {human_bytes(size)}; the limit is {human_bytes(settings.limits.max_file_bytes)}"
    assert await page.text_content("#error") == f"{expected} — choose a smaller file"
    assert not await page.is_visible("#image-preview")


async def test_a_pasted_image_and_a_recorded_clip_are_searched(page, site, settings):
    service, _ = site
    picture = list(make_picture(5))
    await page.evaluate(
        """bytes => {
            const file = new File([new Uint8Array(bytes)], 'image.png', {type: 'image/jpeg'});
            const data = new DataTransfer();
            data.items.add(file);
            document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true}));
        }""",
        picture,
    )
    assert await page.text_content("#image-name") == f"pasted.png ({len(picture) / 1000:.0f} kB)"

    await page.click("#record")
    await page.wait_for_function("() => Number(document.querySelector('#record-time').dataset.seconds) >= 1.0")
    await page.click("#record")
    await page.wait_for_selector("#audio-preview[src^=blob]")
    name = await page.text_content("#audio-name")
    assert name.startswith("recording.")

    audio_name = name.split(" ")[0]

    # What the page will send: the recording, read back from its blob: URL.
    recorded = bytes(await page.evaluate(
        "async () => [...new Uint8Array(await (await fetch(document.querySelector('#audio-preview').src)).arrayBuffer())]"
    ))
    await search_and_wait(page)
    assert not await page.is_visible("#error"), await page.text_content("#error")
    attachments = [Attachment("image", bytes(picture), "pasted.png"), Attachment("audio", recorded, audio_name)]
    query = build_query("", attachments, limits=settings.limits, limit=settings.search.default_limit)
    reply = build_reply(await service.search(query), caption_chars=settings.bot.caption_chars)
    assert await page.text_content("#results-header") == reply.header
    assert reply.header.endswith(f"for: pasted.png + {audio_name}")
    assert seen_cards(await cards(page)) == expected_cards(reply)
