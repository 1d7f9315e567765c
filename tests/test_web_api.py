"""The web page's JSON API over a real server on 127.0.0.1, the tiny model and a real dataset.

Expected results are computed by asking the same `SearchService` directly; the API must give
the same items, in the same order, with the words of `bot.common.reply.build_reply`.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from bot.common.handle import Attachment, build_query, unsupported, user_message
from bot.common.reply import MoreLikeThis, build_reply, decode_action
from bot.web.app import bind_warning, image_url, reply_json, running_web, serve_web
from bot.web.form import max_body_bytes
from core.config import Settings, SpeechSettings
from core.encoder import Encoder
from core.media.kinds import media_kind
from core.service import ResultItem, SearchResult
from core.startup import open_search_service
from core.store.base import Record
from core.store.deeplake_store import DeepLakeStore
from tests.bad_inputs import (
    CASE_IDS,
    CASES,
    TOO_MANY_FILES,
    BadInput,
    MalformedRequest,
    ZeroStream,
    malformed,
    says,
)
from tests.media_factory import make_audio, make_picture
from tests.speech_fixtures import clip

pytestmark = pytest.mark.asyncio(loop_scope="module")

STYLES = ("watercolor", "oil painting", "photo", "pixel art")
SUBJECTS = ("a lighthouse at dusk", "a red fox in snow", "a city street in rain", "a bowl of lemons",
            "a sailing boat", "a mountain lake", "an old robot", "a field of tulips")
DUPLICATED_SEED = 3  # this picture is stored COPIES times under different ids
COPIES = 3
PICTURES = 16
MAX_FILE_BYTES = 100_000


def prompt(seed: int) -> str:
    return f"{SUBJECTS[seed % len(SUBJECTS)]}, {STYLES[seed % len(STYLES)]}, detailed"


def dataset_pictures() -> list[tuple[str, int, bytes]]:
    """(id, seed, JPEG) of every row: distinct pictures, and copies of one of them."""
    rows = [(f"pic{seed:02d}.jpg", seed, make_picture(seed)) for seed in range(PICTURES)]
    rows += [(f"copy{i}-of-pic{DUPLICATED_SEED:02d}.jpg", DUPLICATED_SEED, make_picture(DUPLICATED_SEED))
             for i in range(1, COPIES)]
    return rows


def web_settings(dataset: str) -> Settings:
    return Settings.model_validate(
        {
            "model": {"name": "tiny"},
            "store": {"dataset": dataset},
            "limits": {"max_file_bytes": MAX_FILE_BYTES},
            # Only exact copies fold (distinct pictures stay below 0.996 with tiny's weights).
            "search": {"default_limit": 5, "max_limit": 8, "collapse_cosine": 0.999},
            "speech": {"engine": "none"},
        }
    )


def build_dataset(path: Path) -> dict[str, bytes]:
    """A dataset of captioned pictures (images kept in the dataset, no URLs); JPEG by id."""
    settings = web_settings(str(path))
    rows = dataset_pictures()
    encoder = Encoder.load(settings.model, settings.limits, progress=False)
    vectors = encoder.embed("image", [jpeg for _, _, jpeg in rows])
    store = DeepLakeStore.create(str(path), model_name="tiny", dim=encoder.dim)
    records = []
    for (id_, seed, jpeg), vector in zip(rows, vectors, strict=True):
        width, height = Image.open(io.BytesIO(jpeg)).size
        records.append(Record(id=id_, embedding=vector, text=prompt(seed), source="web-test",
                              image_jpeg=jpeg, width=width, height=height))
    store.append(records)
    store.close()
    return {id_: jpeg for id_, _, jpeg in rows}


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> tuple[Settings, dict[str, bytes]]:
    path = tmp_path_factory.mktemp("web") / "pictures"
    jpegs = build_dataset(path)
    return web_settings(str(path)), jpegs


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(collection):
    settings, _ = collection
    async with open_search_service(settings, progress=False) as service:
        async with running_web(service, settings) as url:
            async with aiohttp.ClientSession(url) as session:
                yield service, session


def form(text: str = "", *, limit: str = "", files: tuple[tuple[str, str, bytes, str], ...] = ()) -> aiohttp.FormData:
    data = aiohttp.FormData(default_to_multipart=True)
    data.add_field("text", text)
    data.add_field("limit", limit)
    for field, name, body, content_type in files:
        data.add_field(field, body, filename=name, content_type=content_type)
    return data


async def post_search(session, data) -> tuple[int, dict]:
    async with session.post("/api/search", data=data) as response:
        return response.status, await response.json()


async def expected_reply(service, settings, text, attachments=(), *, limit=None) -> tuple[list, dict]:
    query = build_query(text, attachments, limits=settings.limits,
                        limit=limit or settings.search.default_limit)
    result = await service.search(query)
    return result.items, build_reply(result, caption_chars=settings.bot.caption_chars)


def shown(body: dict) -> list[tuple[str, str, str, str]]:
    return [(i["id"], i["score_text"], i["caption"], i["similar_text"]) for i in body["images"]]


def expected_shown(reply) -> list[tuple[str, str, str, str]]:
    return [(i.item.id, i.score, i.caption, i.similar) for i in reply.images]


async def test_text_search_with_a_filter_gives_what_the_service_gives(server, collection):
    service, session = server
    settings, _ = collection
    text = "a quiet harbour + 0.5*boats - crowds filter:watercolor"
    status, body = await post_search(session, form(text, limit="3"))
    assert status == 200, body
    items, reply = await expected_reply(service, settings, text, limit=3)
    assert shown(body) == expected_shown(reply) and len(items) == 3
    assert body["header"] == reply.header and body["notice"] == reply.notice == ""
    assert all("watercolor" in i["caption"] for i in body["images"])
    assert [i["rank"] for i in body["images"]] == [1, 2, 3]
    assert body["next_page"] == reply.next_page.encode()


async def test_an_image_finds_itself_with_its_copies_folded_and_its_jpeg_is_served(server, collection):
    service, session = server
    settings, jpegs = collection
    picture = make_picture(DUPLICATED_SEED)
    status, body = await post_search(session, form(files=(("image", "query.jpg", picture, "image/jpeg"),)))
    assert status == 200, body
    _, reply = await expected_reply(service, settings, "", [Attachment("image", picture, "query.jpg")])
    assert shown(body) == expected_shown(reply)
    top = body["images"][0]
    assert top["score_text"] == "1.000" and top["similar_text"] == f"+{COPIES - 1} similar"
    assert top["score"] == pytest.approx(1.0, abs=1e-5) and top["similar"] == COPIES - 1  # numbers, as --json
    assert top["image_url"] == image_url(None, reply.images[0].item.row) == f"/image/{reply.images[0].item.row}"
    async with session.get(top["image_url"]) as response:
        assert response.status == 200 and response.content_type == "image/jpeg"
        assert await response.read() == jpegs[top["id"]]
        etag, cache = response.headers["ETag"], response.headers["Cache-Control"]
    assert "max-age" in cache
    async with session.get(top["image_url"], headers={"If-None-Match": etag}) as response:
        assert response.status == 304
    async with session.get(f"/image/{len(jpegs)}") as response:
        assert response.status == 404


async def test_an_audio_clip_is_a_term(server, collection):
    service, session = server
    settings, _ = collection
    clip = make_audio("ogg", 1.0)
    status, body = await post_search(session, form("a lighthouse", files=(("audio", "tone.ogg", clip, "audio/ogg"),)))
    assert status == 200, body
    _, reply = await expected_reply(service, settings, "a lighthouse", [Attachment("audio", clip, "tone.ogg")])
    assert shown(body) == expected_shown(reply) and body["header"] == reply.header
    assert "tone.ogg" in body["header"]


async def test_a_text_file_sent_as_an_image_is_refused_by_name(server):
    _, session = server
    status, body = await post_search(session, form("cat", files=(("image", "notes.txt", b"hello", "text/plain"),)))
    assert status == 400
    assert body["error"] == user_message(unsupported("notes.txt", "text/plain"))


async def test_bad_fields_and_an_empty_query_are_clear_errors(server, collection):
    _, session = server
    settings, _ = collection
    status, body = await post_search(session, form(""))
    assert status == 400 and "the query is empty" in body["error"].lower()
    status, body = await post_search(session, form("cat", limit="0"))
    assert status == 400 and "a whole number, 1 or more" in body["error"]
    async with session.post("/api/search", json={"text": "cat"}) as response:
        assert response.status == 400 and "multipart" in (await response.json())["error"]
    many = aiohttp.FormData(default_to_multipart=True)
    for _ in range(20):
        many.add_field("text", "cat")
    status, body = await post_search(session, many)
    assert status == 400 and "send one search at a time" in body["error"]


async def test_uploads_over_the_limits_get_413_before_being_read_whole(server, collection):
    _, session = server
    settings, _ = collection
    big = b"\xff\xd8\xff" + bytes(MAX_FILE_BYTES)
    status, body = await post_search(session, form("cat", files=(("image", "big.jpg", big, "image/jpeg"),)))
    assert status == 413
    assert "The file big.jpg is larger than the limit of 100 kB" in body["error"]
    huge = bytes(max_body_bytes(settings) + 1)
    status, body = await post_search(session, form("cat", files=(("image", "huge.jpg", huge, "image/jpeg"),)))
    assert status == 413 and body["error"].startswith("The upload is")


async def test_more_like_this_and_next_page_actions(server, collection):
    service, session = server
    settings, _ = collection
    status, first = await post_search(session, form("a red fox in snow"))
    assert status == 200 and first["next_page"]
    clicked = next(i for i in first["images"] if not i["similar"])
    async with session.post("/api/action", json={"id": clicked["more"], "limit": 3}) as response:
        assert response.status == 200
        more = await response.json()
    action = decode_action(clicked["more"])
    assert isinstance(action, MoreLikeThis) and action.rank == clicked["rank"]
    expected = build_reply(await service.more_like_row(action.row, 3, rank=action.rank))
    assert shown(more) == expected_shown(expected) and more["header"] == expected.header
    assert more["images"][0]["id"] == clicked["id"] and more["images"][0]["score_text"] == "1.000"
    # #20 item 10: the rank clicked and the image's name; an id from before the rank, the name.
    assert more["header"] == f"Results 1-3 for: more like #{clicked['rank']} ({clicked['id']})"
    async with session.post("/api/action", json={"id": f"sa:more:{action.row}", "limit": 3}) as response:
        assert (await response.json())["header"] == f"Results 1-3 for: more like {clicked['id']}"

    async with session.post("/api/action", json={"id": first["next_page"]}) as response:
        assert response.status == 200
        second = await response.json()
    key, offset = first["next_page"].split(":")[2:]
    expected = build_reply(await service.page(key, int(offset)))
    assert shown(second) == expected_shown(expected)
    assert second["images"][0]["rank"] == len(first["images"]) + 1
    assert not {i["id"] for i in second["images"]} & {i["id"] for i in first["images"]}


async def test_a_number_of_results_over_what_a_page_holds_is_said(server, collection):
    """#20 item 11: the same words as the chat bots and the CLI, for a search and for "more like"."""
    _, session = server
    settings, _ = collection
    most = settings.search.max_limit
    note = f"Showing {most} results per page, not 50: a page holds at most {most}."
    status, body = await post_search(session, form("a red fox in snow", limit="50"))
    assert status == 200 and body["notes"] == [note] and len(body["images"]) == most
    async with session.post("/api/action", json={"id": body["images"][0]["more"], "limit": 50}) as response:
        more = await response.json()
    assert more["notes"] == [note] and len(more["images"]) == most
    status, body = await post_search(session, form("a red fox in snow", limit=str(most)))
    assert status == 200 and body["notes"] == []


async def test_a_filter_on_images_without_prompts_says_why_nothing_is_found(collection, tmp_path):
    """#20 item 11: a collection without prompt text (a folder's) answered a bare "nothing found"."""
    settings, jpegs = collection
    with DeepLakeStore.open(settings.store.dataset) as texted:
        dim = texted.info.dim
    dataset = str(tmp_path / "no-prompts")
    with DeepLakeStore.create(dataset, model_name="tiny", dim=dim) as store:
        store.append([Record(id=id_, embedding=vector, image_jpeg=jpeg) for (id_, jpeg), vector in zip(
            list(jpegs.items())[:3], np.random.default_rng(1).standard_normal((3, dim)).astype(np.float32),
            strict=True)])
    promptless = web_settings(dataset)
    async with open_search_service(promptless, progress=False) as service, running_web(service, promptless) as url:
        async with aiohttp.ClientSession(url) as session:
            status, body = await post_search(session, form("a red fox filter:fox"))
            assert status == 400
            assert body["error"].startswith("This collection has no prompt text to filter on")
            status, body = await post_search(session, form("a red fox -filter:fox"))
            assert status == 200 and len(body["images"]) == 3


async def test_bad_actions_and_other_sites_are_refused(server, collection):
    _, session = server
    _, jpegs = collection
    async with session.post("/api/action", json={"id": f"sa:more:{len(jpegs)}"}) as response:
        assert response.status == 400 and f"no image at row {len(jpegs)}" in (await response.json())["error"]
    async with session.post("/api/action", json={"id": "sa:drop:tables"}) as response:
        assert response.status == 400 and "unknown action" in (await response.json())["error"].lower()
    async with session.post("/api/action", json={"id": "sa:page:0123456789abcdef0123:5"}) as response:
        assert response.status == 400 and "expired" in (await response.json())["error"]
    async with session.post("/api/action", data="not json") as response:
        assert response.status == 400 and "JSON" in (await response.json())["error"]
    headers = {"Origin": "http://evil.example"}
    async with session.post("/api/search", data=form("cat"), headers=headers) as response:
        assert response.status == 403 and "other web sites" in (await response.json())["error"]


async def test_the_page_and_its_files_are_served_locally_with_a_strict_policy(server, collection):
    _, session = server
    settings, _ = collection
    async with session.get("/") as response:
        page = await response.text()
        assert response.status == 200 and "/static/app.js" in page
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert "http" not in page.replace("http://127.0.0.1 or https", "")  # no CDN, nothing remote
    for name in ("app.js", "style.css"):
        async with session.get(f"/static/{name}") as response:
            assert response.status == 200
    async with session.get("/api/config") as response:
        config = await response.json()
    assert config["max_limit"] == settings.search.max_limit
    assert config["max_file_bytes"] == settings.limits.max_file_bytes


async def test_the_reply_shows_what_was_heard_and_loads_images_the_browser_can_reach(collection):
    settings, _ = collection
    items = [
        ResultItem("a.jpg", 0.5, "a castle", "https://cdn.example/a.jpg", 7, 10, 10),
        ResultItem("b.jpg", 0.4, "a moat", "file:///data/b.jpg", 8, 10, 10, similar=2),
        ResultItem("c.jpg", 0.3, "", None, 9, 10, 10),
    ]
    result = SearchResult("a red car", items, 0.5, 0.1, 0, 3, True, "ab" * 10, heard="a red car")
    body = reply_json(result, settings)
    assert body["heard_text"] == build_reply(result).heard == "heard: a red car" and body["heard"] == "a red car"
    assert [i["image_url"] for i in body["images"]] == ["https://cdn.example/a.jpg", "/image/8", "/image/9"]
    assert [i["more"] for i in body["images"]] == ["sa:more:7:1", "sa:more:8:2", "sa:more:9:3"]
    assert body["images"][1]["similar_text"] == "+2 similar" and body["next_page"] == f"sa:page:{'ab' * 10}:3"
    assert [i["similar"] for i in body["images"]] == [0, 2, 0] and body["images"][0]["score"] == 0.5


async def test_binding_beyond_loopback_is_warned_about():
    for host in ("127.0.0.1", "::1", "localhost"):
        assert bind_warning(host) is None
    for host in ("0.0.0.0", "192.168.1.20", "::", "my-laptop.example"):
        assert "no login" in bind_warning(host)


async def test_serve_web_runs_until_stopped(collection, capsys):
    settings, _ = collection
    stop = asyncio.Event()
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve_web(settings, host="127.0.0.1", port=0, stop=stop, on_ready=ready.set_result))
    try:
        url = await asyncio.wait_for(ready, 60)
        async with aiohttp.ClientSession(url) as session, session.get("/api/config") as response:
            assert response.status == 200
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert f"open {url}/" in capsys.readouterr().out


# --------------------------------------------------------------------------- the bad-input corpus


def corpus_form(case: BadInput) -> aiohttp.FormData:
    """What the page sends for a corpus case; the 30 MB file is streamed, never held whole."""
    if case.kind == "text":
        return form(case.text)
    data = ZeroStream(case.declared_size) if case.declared_size is not None else case.data
    field = "image" if case.kind == "count" else case.kind
    copies = TOO_MANY_FILES if case.kind == "count" else 1
    return form(files=tuple((field, case.filename, data, case.mimetype) for _ in range(copies)))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
async def test_each_bad_input_gets_a_clear_error(server, collection, case):
    service, session = server
    settings, _ = collection
    status, body = await post_search(session, corpus_form(case))
    if case.searchable:
        assert status == 200, body
        kind = media_kind(case.filename, case.mimetype)
        _, reply = await expected_reply(service, settings, "", [Attachment(kind, case.same_as or case.data, "x")])
        assert shown(body) == expected_shown(reply) and reply.images
    else:
        assert status in (400, 413), body
        assert says(body["error"], case.expected(settings)), body["error"]


async def test_after_the_corpus_the_page_still_searches(server, collection):
    service, session = server
    settings, _ = collection
    status, body = await post_search(session, form("a mountain lake"))
    assert status == 200, body
    _, reply = await expected_reply(service, settings, "a mountain lake")
    assert shown(body) == expected_shown(reply) and reply.images


async def test_a_voice_note_shows_what_was_heard(collection):
    settings, _ = collection
    spoken = settings.model_copy(update={"speech": SpeechSettings(engine="pocketsphinx")})
    voice = clip("red_car.ogg")
    async with open_search_service(spoken, progress=False) as service:
        async with running_web(service, spoken) as url:
            async with aiohttp.ClientSession(url) as session:
                data = form(files=(("audio", voice.file, voice.read(), "audio/ogg"),))
                status, body = await post_search(session, data)
    assert status == 200, body
    assert body["heard_text"].startswith("heard: ")
    assert all(word in body["heard"] for word in voice.key_words)


# --------------------------------------------------------------------------- origins and hosts (issue 17)


async def port_of(session: aiohttp.ClientSession) -> int:
    async with session.get("/api/config") as response:
        assert response.status == 200 and response.url.port is not None
        return response.url.port


async def test_origin_null_and_cross_site_posts_are_refused(server):
    _, session = server
    for headers in ({"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}):
        async with session.post("/api/search", data=form("cat"), headers=headers) as response:
            assert response.status == 403, headers
            assert "other web sites" in (await response.json())["error"]
        async with session.post("/api/action", json={"id": "sa:more:0"}, headers=headers) as response:
            assert response.status == 403, headers
    for fetch_site in ("same-origin", "none"):  # the page itself; the user typing the address
        async with session.post("/api/search", data=form("cat"), headers={"Sec-Fetch-Site": fetch_site}) as response:
            assert response.status == 200, fetch_site


async def test_only_the_configured_host_names_are_served(server):
    """DNS rebinding: a page on rebind.example whose name now points at 127.0.0.1 sends
    `Host: rebind.example`; every route refuses it, the image route included."""
    _, session = server
    port = await port_of(session)
    for host in (f"rebind.example:{port}", "rebind.example", f"127.0.0.1.rebind.example:{port}"):
        for method, path in (("GET", "/image/0"), ("GET", "/"), ("GET", "/api/config"),
                             ("GET", "/static/app.js"), ("POST", "/api/action")):
            async with session.request(method, path, headers={"Host": host}, json={"id": "sa:more:0"}) as response:
                assert response.status == 403, (host, path)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost"):
        async with session.get("/image/0", headers={"Host": host}) as response:
            assert response.status == 200, host


async def test_images_may_be_loaded_only_by_the_page_itself(server):
    _, session = server
    async with session.get("/image/0") as response:
        assert response.status == 200
        assert response.headers["Cross-Origin-Resource-Policy"] == "same-origin"


# --------------------------------------------------------------------------- malformed requests (issue 17)


async def send_malformed(session: aiohttp.ClientSession, case: MalformedRequest) -> tuple[int, dict]:
    if case.target == "web-form":
        async with session.post("/api/search", data=form("cat", limit=case.limit)) as response:
            return response.status, await response.json()
    body: Any = case.body
    if case.chunked:
        async def stream() -> AsyncIterator[bytes]:
            for start in range(0, len(case.body), 1024):
                yield case.body[start : start + 1024]
        body = stream()
    headers = {"Content-Type": "application/json"}
    async with session.post("/api/action", data=body, headers=headers) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("case", malformed("web-form", "web-action"))
async def test_malformed_requests_get_a_clear_4xx_and_log_no_error(server, case, caplog):
    _, session = server
    with caplog.at_level(logging.WARNING):
        status, body = await send_malformed(session, case)
    assert status == case.status, body
    assert says(body["error"], case.expect), body["error"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_a_chunked_action_body_is_refused_after_its_cap_not_read_to_its_end(server):
    """A body without a length that never ends: the answer comes after about 4 KB (the rest
    is never read); reading the whole body, it would never come (the bounded wait fails)."""
    _, session = server
    finish = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        yield b'{"id": "sa:more:0"' + b" " * 8192
        await finish.wait()  # the client holds the body open until the test ends
        yield b"}"

    try:
        async with asyncio.timeout(20):
            async with session.post("/api/action", data=endless(),
                                    headers={"Content-Type": "application/json"}) as response:
                assert response.status == 400
                assert "too long" in (await response.json())["error"]
    finally:
        finish.set()
