"""The encoder worker: one thread runs the model; async callers await their embeddings.

Requests that arrive together are batched per modality: the thread takes the first waiting
request, then gathers the others of the same burst (those submitted in the same turn of the
event loop, as a `gather` of several terms or searches does) and whatever queued while the model
was busy, up to `max_batch_size`. After each burst the loop posts an end-of-burst marker, so a
lone request goes to the model at once; `batch_window_ms` only bounds how long the thread waits
for that marker (when the loop is slow to reach it). Decoding and preprocessing happen in the
thread too, one input at a time, so a bad file fails only its own request. The event loop never
runs torch.

Background work (channel memory's indexing: `embed(..., background=True)`) waits in a queue of
its own and runs only when no interactive request is waiting: queries first, indexing batches
behind them. A batch already in the model is never interrupted, so while queries keep coming the
background may use at most `background_share` of the thread's time (after a background batch
of t seconds, the next one waits t * (1 - share) / share unless no query came for
`background_quiet_s`); with no queries it runs flat out. benchmarks/bench_memory.py measures
the queries' latency with and without that load.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.encoder import Encoder
from core.errors import EncoderUnavailableError

log = logging.getLogger(__name__)


@dataclass
class _Job:
    modality: str
    payload: Any
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


_STOP = object()
_END_OF_BURST = object()  # posted by the event loop after the requests of one turn
_WAKE = object()  # posted with each background job: the thread looks at the background queue
FAILED = "the image model failed on this request (it has been logged); please try again"


def _resolve(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
    def settle() -> None:
        if job.future.done():
            return
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
        pass


class EncoderWorker:
    """Runs `encoder` in a dedicated thread; use as `async with EncoderWorker(...) as worker`."""

    def __init__(self, encoder: Encoder, *, batch_window_ms: float = 5.0, max_batch_size: int = 8,
                 background_batch_size: int = 4, background_share: float = 0.1,
                 background_quiet_s: float = 2.0):
        if not 0 < background_share <= 1:
            raise ValueError(f"background_share must be within (0, 1], got {background_share}")
        self.encoder = encoder
        self.background_batch_size = max(1, background_batch_size)
        self.background_share = background_share
        self.background_quiet_s = background_quiet_s
        self._background: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._background_not_before = 0.0  # monotonic time before which no background batch starts
        self._last_interactive = float("-inf")  # when the last interactive batch finished
        self.background_batches = 0
        self.batch_window_s = batch_window_ms / 1000.0
        self.max_batch_size = max_batch_size
        self.batch_sizes: Counter[int] = Counter()  # how many inputs each forward pass took
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._burst_loop: asyncio.AbstractEventLoop | None = None  # will post an end-of-burst
        self.restarts = 0  # threads replaced after one died

    async def __aenter__(self) -> EncoderWorker:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="encoder-worker", daemon=True)
            self._thread.start()

    async def aclose(self) -> None:
        """Finish the requests already queued, then stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        while self._thread is not None and self._thread.is_alive():
            await asyncio.to_thread(self._thread.join, 1.0)

    @property
    def running(self) -> bool:
        """Whether requests are being served (started, not closed, thread alive)."""
        return not self._closed and self._thread is not None and self._thread.is_alive()

    async def embed(self, modality: str, payload: Any, *, background: bool = False) -> np.ndarray:
        """The embedding of one input (float32, [dim]); bad input raises its user-facing error.
        `background`: behind every interactive request (see the module docstring)."""
        if self._closed or self._thread is None:
            raise EncoderUnavailableError("the encoder is not running; try again in a moment")
        loop = asyncio.get_running_loop()
        job = _Job(modality, payload, loop.create_future(), loop)
        if background:
            self._background.put(job)
            self._queue.put(_WAKE)
            return await job.future
        self._queue.put(job)
        if self._burst_loop is not loop:
            # Runs on the loop's next turn, after every request submitted in this one.
            self._burst_loop = loop
            loop.call_soon(self._end_burst)
        return await job.future

    def _end_burst(self) -> None:
        self._burst_loop = None
        self._queue.put(_END_OF_BURST)

    # --- the worker thread ---------------------------------------------------------------

    def _run(self) -> None:
        """Serve batches until stopped. A failing batch fails only its own requests; if the
        thread dies anyway (a BaseException from native code or a bug), the requests in hand
        fail with a message and a new thread takes over the queue."""
        batch: list[_Job] = []
        stopped = False
        try:
            while True:
                first = self._next()
                if first is None:
                    batch = self._take_background()
                    self._run_background(batch)
                    batch = []
                    continue
                if first is _END_OF_BURST or first is _WAKE:
                    continue
                if first is _STOP:
                    stopped = True
                    break
                batch, stopping = self._gather(first)
                self._last_interactive = time.monotonic()  # before the answers: callers may look
                try:
                    for modality in dict.fromkeys(job.modality for job in batch):
                        self._process([job for job in batch if job.modality == modality])
                except Exception:
                    log.exception("encoder worker failed on a batch of %d; serving on", len(batch))
                    for job in batch:
                        _resolve(job, error=EncoderUnavailableError(FAILED))
                batch = []
                self._last_interactive = time.monotonic()
                if stopping:
                    stopped = True
                    break
        finally:
            for job in batch:
                _resolve(job, error=EncoderUnavailableError(FAILED))
            if stopped or self._closed:
                self._fail_leftovers()
            else:
                self._restart()

    def background_pause(self, busy_s: float) -> float:
        """Seconds that background work done outside the worker (decoding, writing) which just
        kept a core busy for `busy_s` should wait, to keep to `background_share` while queries
        come; 0 when none came for `background_quiet_s`."""
        if time.monotonic() - self._last_interactive >= self.background_quiet_s:
            return 0.0
        return busy_s * (1 - self.background_share) / self.background_share

    def _next(self) -> Any:
        """The next interactive job or marker; None when a background batch may run now."""
        if self._background.empty():
            return self._queue.get()
        now = time.monotonic()
        quiet = now - self._last_interactive >= self.background_quiet_s
        wait = 0.0 if quiet else self._background_not_before - now
        try:
            return self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _take_background(self) -> list[_Job]:
        batch: list[_Job] = []
        while len(batch) < self.background_batch_size:
            try:
                batch.append(self._background.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run_background(self, batch: list[_Job]) -> None:
        """One background batch; the next waits so that it keeps to its share of the time."""
        if not batch:
            return
        start = time.monotonic()
        try:
            for modality in dict.fromkeys(job.modality for job in batch):
                self._process([job for job in batch if job.modality == modality])
        except Exception:
            log.exception("encoder worker failed on a background batch of %d; serving on", len(batch))
            for job in batch:
                _resolve(job, error=EncoderUnavailableError(FAILED))
        end = time.monotonic()
        self.background_batches += 1
        self._background_not_before = end + (end - start) * (1 - self.background_share) / self.background_share

    def _restart(self) -> None:
        self.restarts += 1
        log.error("encoder worker thread died; starting a new one (restart %d)", self.restarts)
        self._thread = threading.Thread(target=self._run, name="encoder-worker", daemon=True)
        self._thread.start()

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        batch = [first]
        deadline = time.monotonic() + self.batch_window_s
        burst_over = False  # then take only what is already queued
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                if remaining > 0 and not burst_over:
                    job = self._queue.get(timeout=remaining)
                else:
                    job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _END_OF_BURST:
                burst_over = True
                continue
            if job is _WAKE:
                continue
            if job is _STOP:
                return batch, True
            batch.append(job)
        return batch, False

    def _process(self, jobs: list[_Job]) -> None:
        ready: list[tuple[_Job, Any]] = []
        for job in jobs:
            if job.future.cancelled():
                continue
            try:
                ready.append((job, self.encoder.prepare(job.modality, job.payload)))
            except Exception as exc:  # bad media fails only its own request
                _resolve(job, error=exc)
        if not ready:
            return
        try:
            vectors = self.encoder.forward(jobs[0].modality, [prepared for _, prepared in ready])
        except Exception:
            log.exception("encoder forward pass failed for %d %s inputs", len(ready), jobs[0].modality)
            for job, _ in ready:
                _resolve(job, error=EncoderUnavailableError(FAILED))
            return
        self.batch_sizes[len(ready)] += 1
        for (job, _), vector in zip(ready, vectors, strict=True):
            _resolve(job, result=vector)

    def _fail_leftovers(self) -> None:
        while True:
            try:
                background = self._background.get_nowait()
            except queue.Empty:
                break
            _resolve(background, error=EncoderUnavailableError("the encoder shut down; try again"))
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP and job is not _END_OF_BURST and job is not _WAKE:
                _resolve(job, error=EncoderUnavailableError("the encoder shut down; try again"))
