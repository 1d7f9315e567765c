"""The encoder worker: one thread runs the model; async callers await their embeddings.

Requests that arrive together are batched per modality: the thread takes the first waiting
request, then gathers more for up to `batch_window_ms` (and whatever queued while the model was
busy), up to `max_batch_size`. Decoding and preprocessing happen in the thread too, one input at
a time, so a bad file fails only its own request. The event loop never runs torch.
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

    def __init__(self, encoder: Encoder, *, batch_window_ms: float = 5.0, max_batch_size: int = 8):
        self.encoder = encoder
        self.batch_window_s = batch_window_ms / 1000.0
        self.max_batch_size = max_batch_size
        self.batch_sizes: Counter[int] = Counter()  # how many inputs each forward pass took
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

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
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    async def embed(self, modality: str, payload: Any) -> np.ndarray:
        """The embedding of one input (float32, [dim]); bad input raises its user-facing error."""
        if self._closed or self._thread is None:
            raise EncoderUnavailableError("the encoder is not running; try again in a moment")
        loop = asyncio.get_running_loop()
        job = _Job(modality, payload, loop.create_future(), loop)
        self._queue.put(job)
        return await job.future

    # --- the worker thread ---------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stopping = self._gather(first)
            for modality in dict.fromkeys(job.modality for job in batch):
                self._process([job for job in batch if job.modality == modality])
        self._fail_leftovers()

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        batch = [first]
        deadline = time.monotonic() + self.batch_window_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
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
        except Exception as exc:
            log.exception("encoder forward pass failed for %d %s inputs", len(ready), jobs[0].modality)
            for job, _ in ready:
                _resolve(job, error=exc)
            return
        self.batch_sizes[len(ready)] += 1
        for (job, _), vector in zip(ready, vectors, strict=True):
            _resolve(job, result=vector)

    def _fail_leftovers(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                _resolve(job, error=EncoderUnavailableError("the encoder shut down; try again"))
