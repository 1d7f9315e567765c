"""The recogniser in a worker process of its own (issue 16, item 2): a voice note being
transcribed never stalls the event loop; a full queue, a clip past its time limit and a dead
worker each get a clear answer; closing the service leaves no child process."""

import asyncio
import multiprocessing
import os
import signal
import time
from functools import partial

import pytest

from bot.cli import main
from core.config import MediaLimits, Settings, SpeechSettings
from core.query import Query, Term
from core.speech import transcriber_from_settings
from core.speech.process import (
    BUSY,
    RecogniserProcess,
    SpeechBusyError,
    SpeechTimeoutError,
)
from core.startup import open_search_service
from tests.media_factory import picture_folder
from tests.speech_fixtures import clip, long_voice_note

N_IMAGES = 8
TICK_S = 0.01


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> Settings:
    root = picture_folder(tmp_path_factory.mktemp("pictures"), N_IMAGES)
    dataset = str(tmp_path_factory.mktemp("ds") / "pictures")
    assert (
        main(["ingest", f"folder:{root}", "--dataset", dataset, "--model", "tiny"]) == 0
    )
    return Settings.model_validate(
        {"model": {"name": "tiny"}, "store": {"dataset": dataset}}
    )


@pytest.fixture(scope="module")
def long_note() -> bytes:
    return long_voice_note(30.0)


def voice(data: bytes, label: str = "voice.ogg") -> Query:
    return Query((Term("audio", data, label=label),))


class Ticker:
    """Counts 10 ms sleeps on the loop and keeps the longest gap between two wake-ups."""

    def __init__(self):
        self.ticks = 0
        self.max_gap = 0.0

    async def run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(TICK_S)
            now = time.perf_counter()
            self.ticks += 1
            self.max_gap = max(self.max_gap, now - last)
            last = now


async def test_a_voice_note_being_transcribed_does_not_stall_the_loop(
    settings, long_note
):
    async with open_search_service(settings, progress=False) as service:
        await service.search(
            voice(clip("red_car.ogg").read())
        )  # the recogniser is loaded
        ticker = Ticker()
        task = asyncio.create_task(ticker.run())
        start = time.perf_counter()
        result = await service.search(voice(long_note))
        took = time.perf_counter() - start
        task.cancel()
    assert "car" in result.heard.split() and service.audio.transcribed == 2
    # While the clip was transcribed the loop kept ticking: at least a quarter of the ticks
    # that fit in the transcription's time, and no gap longer than a quarter of it (before:
    # one gap as long as the whole transcription, about 2.5 s).
    assert ticker.ticks >= took / TICK_S / 4, (ticker.ticks, took)
    assert ticker.max_gap < took / 4, (ticker.max_gap, took)


async def test_closing_the_service_leaves_no_child_process(settings):
    before = {p.pid for p in multiprocessing.active_children()}
    async with open_search_service(settings, progress=False) as service:
        await service.search(voice(clip("snow.ogg").read()))
        children = {p.pid for p in multiprocessing.active_children()} - before
        assert len(children) == 1, "the recogniser runs in one worker process"
    assert not {p.pid for p in multiprocessing.active_children()} & children
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.fixture
async def recogniser():
    process = RecogniserProcess(
        partial(transcriber_from_settings, SpeechSettings()),
        MediaLimits(),
        max_queued=2,
    )
    process.start()
    yield process
    await process.aclose()


async def test_a_full_queue_refuses_the_next_voice_note_at_once(recogniser):
    data = clip("banana.ogg").read()
    results = await asyncio.gather(
        *(recogniser.transcribe(data) for _ in range(3)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(refused[0], SpeechBusyError)
    assert (
        str(refused[0]) == BUSY == "too many voice notes at once, try again in a minute"
    )
    assert all(
        "banana" in r.text.split() for r in results if not isinstance(r, BaseException)
    )


async def test_a_dead_worker_is_replaced_and_the_next_clip_works(recogniser):
    data = clip("red_car.ogg").read()
    assert "car" in (await recogniser.transcribe(data)).text.split()
    dead = recogniser.pid
    os.kill(dead, signal.SIGKILL)
    assert "car" in (await recogniser.transcribe(data)).text.split()
    assert recogniser.pid not in (None, dead) and recogniser.restarts == 1


async def test_a_clip_past_its_time_limit_is_refused_and_the_worker_restarted(
    recogniser, long_note
):
    await recogniser.transcribe(
        clip("snow.ogg").read()
    )  # loaded: the limit counts the clip alone
    first = recogniser.pid
    recogniser.timeout_s = 0.05
    with pytest.raises(
        SpeechTimeoutError, match=r"took longer than 0.05 s to transcribe"
    ):
        await recogniser.transcribe(long_note)
    recogniser.timeout_s = 60.0
    assert "snow" in (await recogniser.transcribe(clip("snow.ogg").read())).text.split()
    assert recogniser.pid != first and recogniser.restarts == 1
