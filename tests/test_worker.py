"""The encoder worker: batching per modality, per-request errors, a free event loop, shutdown."""

import asyncio

import numpy as np
import pytest

from core.config import MediaLimits, ModelSettings
from core.encoder import Encoder
from core.errors import EncoderUnavailableError, UnsupportedMediaError
from core.worker import EncoderWorker
from tests.media_factory import make_jpeg


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load(ModelSettings(name="tiny"), MediaLimits())


async def test_requests_arriving_together_share_one_forward_pass(encoder):
    texts = [f"a picture of thing {i}" for i in range(8)]
    # A long window only bounds the wait: the batch closes as soon as it holds max_batch_size.
    async with EncoderWorker(encoder, batch_window_ms=2000, max_batch_size=8) as worker:
        vectors = await asyncio.gather(*(worker.embed("text", t) for t in texts))
    assert worker.batch_sizes == {8: 1}
    np.testing.assert_allclose(np.stack(vectors), encoder.embed("text", texts), atol=1e-5)


async def test_a_lone_request_does_not_wait_for_the_batch_window(encoder):
    # The window only bounds the wait for the rest of a burst (the requests submitted in one
    # turn of the event loop); a request alone in its turn goes to the model at once. Were the
    # worker to wait out this hour-long window, wait_for would fail.
    async with EncoderWorker(encoder, batch_window_ms=3_600_000, max_batch_size=8) as worker:
        for text in ("alone", "alone again"):
            await asyncio.wait_for(worker.embed("text", text), timeout=600)
        vectors = await asyncio.wait_for(
            asyncio.gather(*(worker.embed("text", f"together {i}") for i in range(3))), timeout=600
        )
    assert worker.batch_sizes == {1: 2, 3: 1}
    assert len(vectors) == 3


async def test_modalities_are_batched_separately(encoder):
    async with EncoderWorker(encoder, batch_window_ms=2000, max_batch_size=4) as worker:
        results = await asyncio.gather(
            worker.embed("text", "a"), worker.embed("image", make_jpeg(seed=1)),
            worker.embed("text", "b"), worker.embed("image", make_jpeg(seed=2)),
        )
    assert worker.batch_sizes == {2: 2}
    assert all(r.shape == (encoder.dim,) for r in results)


async def test_bad_input_fails_only_its_own_request(encoder):
    async with EncoderWorker(encoder, batch_window_ms=2000, max_batch_size=3) as worker:
        good, bad, unknown = await asyncio.gather(
            worker.embed("image", make_jpeg(seed=3)),
            worker.embed("image", b"not an image at all"),
            worker.embed("smell", "roses"),
            return_exceptions=True,
        )
    assert isinstance(good, np.ndarray)
    assert isinstance(bad, UnsupportedMediaError)
    assert isinstance(unknown, ValueError)
    np.testing.assert_allclose(good, encoder.embed("image", [make_jpeg(seed=3)])[0], atol=1e-5)


async def test_event_loop_keeps_running_during_a_forward_pass(encoder):
    ticks = 0
    done = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    async with EncoderWorker(encoder, batch_window_ms=0, max_batch_size=8) as worker:
        task = asyncio.create_task(ticker())
        images = [make_jpeg(256, 256, seed=i) for i in range(8)]
        await asyncio.gather(*(worker.embed("image", im) for im in images))
        ticks_during = ticks
        done.set()
        await task
    # Run on the loop, the eight forward passes would leave the ticker a handful of turns (one
    # per await in gather); in the worker thread it spins for the whole computation.
    assert ticks_during > 100


async def test_closed_worker_refuses_with_a_clear_error(encoder):
    worker = EncoderWorker(encoder)
    async with worker:
        assert (await worker.embed("text", "x")).shape == (encoder.dim,)
    with pytest.raises(EncoderUnavailableError):
        await worker.embed("text", "x")


class FaultyEncoder:
    """The real encoder, with a fault injected into the next forward pass."""

    def __init__(self, encoder: Encoder, fault: BaseException):
        self.encoder, self.fault = encoder, fault

    def prepare(self, modality, payload):
        return self.encoder.prepare(modality, payload)

    def forward(self, modality, prepared):
        if self.fault is not None:
            fault, self.fault = self.fault, None
            raise fault
        return self.encoder.forward(modality, prepared)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the death itself
@pytest.mark.parametrize("fault", [RuntimeError("CUDA out of memory"), SystemExit(1)], ids=["raises", "dies"])
async def test_a_failing_or_dying_worker_fails_the_request_and_serves_the_next(encoder, fault):
    faulty = FaultyEncoder(encoder, fault)
    async with EncoderWorker(faulty, batch_window_ms=0) as worker:  # type: ignore[arg-type]
        with pytest.raises(EncoderUnavailableError, match="failed on this request"):
            await worker.embed("text", "a cat")
        vector = await worker.embed("text", "a cat")
        assert worker.running
    np.testing.assert_allclose(vector, encoder.embed("text", ["a cat"])[0], atol=1e-5)
    assert worker.restarts == (1 if isinstance(fault, SystemExit) else 0)
    assert not worker.running
