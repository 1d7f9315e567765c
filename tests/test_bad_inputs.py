"""The bad-input corpus (tests/bad_inputs.py) through the core: the query parser, the decoders and
`SearchService`, with the message-to-query layer both bots share (`bot.common.handle`).

Each case ends in a `BadInputError` whose user message says what is wrong, or (the animated GIF,
the silent clip) in ordinary results; after the whole corpus the same service still searches.
"""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import pytest_asyncio

import core.media.audio as audio_module
from bot.common.handle import Attachment, build_query, check_attachment_count, unsupported, user_message
from core.config import Secrets, Settings
from core.errors import BadInputError, MediaTooLargeError
from core.media.audio import decode_audio
from core.media.kinds import media_kind
from core.query import Query, Term
from core.service import SearchResult, SearchService
from core.startup import open_search_service
from ingest.runner import run_ingest
from tests.bad_inputs import CASE_IDS, CASES, RED, TOO_MANY_FILES, BadInput, says
from tests.media_factory import encode, picture_folder, solid_image

in_module_loop = pytest.mark.asyncio(loop_scope="module")  # the loop of the module's service

PICTURES = 8
LIMIT = 3


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("bad-inputs")
    pictures = picture_folder(root / "pictures", PICTURES)
    settings = Settings.model_validate(
        {
            "model": {"name": "tiny", "cache_dir": str(root / "cache")},
            "store": {"dataset": str(root / "dataset")},
            "search": {"collapse_cosine": 1.0},
            "ops": {"refresh_seconds": 0},
        }
    )
    report = run_ingest(settings, f"folder:{pictures}", secrets=Secrets(), workers=0, progress=False)
    assert report.summary.added == PICTURES
    return settings


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def service(settings):
    async with open_search_service(settings, secrets=Secrets(), progress=False) as service:
        yield service


def query_for(case: BadInput, settings: Settings, *, data: bytes | None = None) -> Query:
    """The query a chat adapter makes of `case`: count, kind and size checks, then the parser."""
    if case.kind == "text":
        return build_query(case.text, [], limits=settings.limits, limit=LIMIT)
    check_attachment_count(TOO_MANY_FILES if case.kind == "count" else 1, settings.bot.max_attachments)
    kind = media_kind(case.filename, case.mimetype)
    if kind is None:
        raise unsupported(case.filename, case.mimetype)
    attachment = Attachment(kind, case.full_data() if data is None else data, case.filename)
    return build_query("", [attachment], limits=settings.limits, limit=LIMIT)


def listed(result: SearchResult) -> list[tuple[str, float]]:
    return [(item.id, round(item.score, 5)) for item in result.items]


@in_module_loop
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
async def test_each_bad_input_gets_a_message_that_says_what_is_wrong(service: SearchService, settings, case):
    if case.searchable:
        result = await service.search(query_for(case, settings))
        assert len(result.items) == LIMIT
        if case.same_as is not None:
            assert listed(result) == listed(await service.search(query_for(case, settings, data=case.same_as)))
        return
    with pytest.raises(BadInputError) as caught:
        await service.search(query_for(case, settings))
    message = user_message(caught.value)
    assert says(message, case.expected(settings)), message
    assert "\n" not in message and "incident" not in message


@in_module_loop
async def test_an_animated_gif_is_searched_by_its_first_frame(service, settings):
    (gif,) = [case for case in CASES if case.name == "gif-animated"]
    vector = await service.query_vector(query_for(gif, settings))
    first = await service.query_vector(query_for(gif, settings, data=gif.same_as))
    second = await service.query_vector(query_for(gif, settings, data=encode(solid_image(32, 32, RED), "PNG")))
    assert np.allclose(vector, first, atol=1e-6) and not np.allclose(vector, second, atol=1e-3)


@in_module_loop
async def test_a_silent_clip_is_searched_as_a_sound(service, settings):
    (silent,) = [case for case in CASES if case.name == "audio-silent"]
    result = await service.search(query_for(silent, settings))
    as_sound = await service.search(Query((Term("audio", silent.data),), limit=LIMIT, audio_as="sound"))
    assert result.heard == "" and listed(result) == listed(as_sound)


@in_module_loop
async def test_after_the_corpus_the_service_still_searches(service):
    assert service.worker.running
    result = await service.search(Query((Term("text", "a red circle"),), limit=LIMIT))
    assert len(result.items) == LIMIT
    metrics = service.metrics.render().decode()
    for error in ("UnsupportedMediaError", "MediaTooLargeError", "MediaTooShortError"):
        assert f'search_all_errors_total{{error="{error}"}}' in metrics


def two_hour_mp3() -> bytes:
    """A real two-hour MP3: one second of silence at 8 kbit/s (MPEG-2.5, 8 kHz, no Xing header)
    repeated; MP3 frames stand alone, so the copies play one after another (about 8 MB)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3", options={"write_xing": "0", "id3v2_version": "0"}) as output:
        stream = output.add_stream("libmp3lame", rate=8000)
        stream.layout, stream.bit_rate = "mono", 8000
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 8000, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            output.mux(packet)
    return buffer.getvalue() * 7200


def test_a_real_two_hour_mp3_is_refused_from_its_duration_before_decoding(settings, monkeypatch):
    decoded = []
    real_chunks = audio_module._resampled_chunks

    def counting_chunks(*args, **kwargs):
        for chunk in real_chunks(*args, **kwargs):
            decoded.append(chunk.size)
            yield chunk

    monkeypatch.setattr(audio_module, "_resampled_chunks", counting_chunks)
    data = two_hour_mp3()
    assert len(data) < settings.limits.max_file_bytes  # the duration is what is too much
    with pytest.raises(MediaTooLargeError, match=r"long; the limit is 300 s — send a shorter clip") as caught:
        decode_audio(data, settings.limits)
    seconds = float(str(caught.value).split(" s long")[0].rsplit(" ", 1)[1])
    assert seconds >= 7200 and decoded == []
