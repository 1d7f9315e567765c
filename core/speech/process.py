"""The recogniser in a warm worker process of its own, so that a voice note never stalls the bot.

pocketsphinx's `Decoder.process_raw` holds the GIL for the whole clip: in a thread it froze the
event loop (a 30 s clip: 2.5 s, nobody answered; DESIGN.md section 7). faster-whisper runs here
too: its feature extraction and decoding loop are Python and numpy between CTranslate2 calls.
So the clip's bytes go to one worker process (started with "spawn": it inherits no torch
threads and no event loop), which decodes them (PyAV), loads the recogniser once and keeps it.

- One clip at a time in the worker; at most `max_queued` clips waiting or running: one more is
  refused at once with `SpeechBusyError` ("too many voice notes at once, try again in a minute").
- A clip that runs longer than `timeout_s` is refused with `SpeechTimeoutError`; the worker is
  killed (it cannot be interrupted otherwise) and a fresh one started for the next clip.
- A worker that died (killed, out of memory, a crash in the C library) is replaced; the clip it
  was running is tried once more in the new worker, then refused with `SpeechFailedError`.
- `aclose()` stops the worker (killing it when it does not exit at once): no child is left.
- The worker exits on its own when its parent is gone (a SIGKILLed bot leaves no orphan).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from core.config import MediaLimits
from core.errors import BadInputError, SearchAllError
from core.speech.base import Transcriber, Transcript, transcribe_clip

log = logging.getLogger(__name__)

BUSY = "too many voice notes at once, try again in a minute"


class SpeechBusyError(BadInputError):
    """The recogniser's queue is full."""


class SpeechTimeoutError(BadInputError):
    """A clip took longer than `[speech] clip_timeout_s` in the recogniser."""


class SpeechFailedError(SearchAllError):
    """The recogniser's process died on a clip, twice."""


# --- the worker process ----------------------------------------------------------------------

_recogniser: Transcriber | None = None  # in the worker process only: loaded once, kept


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(1.0)


def _start_worker(parent: int) -> None:
    threading.Thread(
        target=_watch_parent, args=(parent,), daemon=True, name="parent-watch"
    ).start()


def _load(load: Callable[[], Transcriber]) -> int:
    """Load the recogniser in the worker (once); its process id."""
    global _recogniser
    if _recogniser is None:
        _recogniser = load()
    return os.getpid()


def _transcribe(data: bytes, limits: MediaLimits) -> Transcript:
    assert _recogniser is not None, "the recogniser is loaded before any clip"
    return transcribe_clip(_recogniser, data, limits)


# --- the event loop's side -------------------------------------------------------------------


class RecogniserProcess:
    """`transcribe(bytes)` in a warm worker process (see the module docstring)."""

    def __init__(
        self,
        load: Callable[[], Transcriber],
        limits: MediaLimits,
        *,
        max_queued: int = 8,
        timeout_s: float = 60.0,
    ):
        """`load` builds the recogniser in the worker: picklable (a module-level function or a
        `functools.partial` of one), as it is sent there."""
        self.load = load
        self.limits = limits
        self.max_queued = max_queued
        self.timeout_s = timeout_s
        self.restarts = (
            0  # workers replaced after a death or a timeout (for tests and stats)
        )
        self._pool: ProcessPoolExecutor | None = None
        self._loaded = False
        self._queued = 0
        self._turn = asyncio.Lock()
        self._closed = False
        self._warming: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        """The worker's process id (None before it started)."""
        processes = list(getattr(self._pool, "_processes", None) or {})
        return processes[0] if processes else None

    def start(self) -> None:
        """Start the worker and load the recogniser in the background (call from the loop)."""
        self._warming = asyncio.get_running_loop().create_task(self._warm())

    async def _warm(self) -> None:
        try:
            async with self._turn:
                await self._ensure_loaded()
            log.info("speech recogniser ready in worker process %s", self.pid)
        except Exception as exc:  # noqa: BLE001  (told again to the first voice note, which retries)
            log.warning("the speech recogniser could not be loaded yet: %s", exc)

    async def transcribe(self, data: bytes) -> Transcript:
        if self._closed:
            raise SpeechFailedError(
                "speech recognition is shutting down — try again in a minute"
            )
        if self._queued >= self.max_queued:
            raise SpeechBusyError(BUSY)
        self._queued += 1
        try:
            async with self._turn:
                for attempt in (1, 2):
                    try:
                        await self._ensure_loaded()
                        return await self._run(data)
                    except BrokenProcessPool:
                        await self._replace(
                            f"the speech worker died (attempt {attempt})"
                        )
                raise SpeechFailedError(
                    "the speech recogniser failed on this voice note — try another recording, "
                    "or search it as a sound"
                )
        finally:
            self._queued -= 1

    async def _run(self, data: bytes) -> Transcript:
        future = self._submit(_transcribe, data, self.limits)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            await self._replace(f"a clip ran past {self.timeout_s:g} s")
            raise SpeechTimeoutError(
                f"the voice note took longer than {self.timeout_s:g} s to transcribe — send a "
                "shorter one, or search it as a sound"
            ) from None

    async def _ensure_loaded(self) -> None:
        if not self._loaded:
            await asyncio.wrap_future(self._submit(_load, self.load))
            self._loaded = True

    def _submit(self, fn, *args) -> Future:
        if self._closed:
            raise SpeechFailedError(
                "speech recognition is shutting down — try again in a minute"
            )
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=context,
                initializer=_start_worker,
                initargs=(os.getpid(),),
            )
            self._loaded = False
        return self._pool.submit(fn, *args)

    async def _replace(self, why: str) -> None:
        log.warning("restarting the speech worker: %s", why)
        self.restarts += 1
        await self._stop()

    async def _stop(self) -> None:
        pool, self._pool, self._loaded = self._pool, None, False
        if pool is None:
            return
        processes = list((getattr(pool, "_processes", None) or {}).values())
        for (
            process
        ) in processes:  # a clip in the recogniser cannot be interrupted otherwise
            if process.is_alive():
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(_reap, processes)

    async def aclose(self) -> None:
        """Stop the worker (a clip still running is refused); no child process is left."""
        self._closed = True
        if self._warming is not None and not self._warming.done():
            self._warming.cancel()
        await self._stop()


def _reap(processes: list) -> None:
    for process in processes:
        process.join(timeout=10)
