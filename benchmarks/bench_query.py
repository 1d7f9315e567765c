"""The query path against the model's own cost, and what micro-batching buys under load.

    python benchmarks/bench_query.py                       # imagebind_huge, random weights
    python benchmarks/bench_query.py --model tiny --repeats 15 --json out.json
    python benchmarks/bench_query.py --no-slack            # without the Slack path (or its extra)

Part 1, one query at a time (per modality: a text, a 512x512 JPEG's bytes, a 5 s ogg/Opus
clip's bytes). Three paths on the same encoder, store and inputs, alternated (A B C C B A ...)
so that load from other work on the machine falls on all of them:

- floor: `encoder.embed(modality, [payload])` (decode + prepare + forward, synchronous, in the
  calling thread) plus an exact numpy top-k over the store's unit matrix: what any search must
  cost;
- service: `SearchService.search(Query(...))`: the encoder worker thread (queue, batching
  window), fusion, the page memory (SQLite file), the store's exact search with near-duplicate
  folding, the cut-off, result items. The text cache is off (`text_cache_size=0`);
- slack (`--slack`, on when slack_bolt imports): a chat event to the reply, through the real
  Bolt app (`bot.slack.app.running_slack_bot`, HTTP mode on 127.0.0.1) holding the same service,
  against the fake Slack Web API and file host of tests/fakes/slack.py. The text is a signed
  `/search <text> limit:N` slash command; the image and the clip are `app_mention` events
  carrying a Slack file (photo.jpg, clip.ogg) that the bot downloads from the fake with its
  token. The service has no speech reader (`audio=None`), so the clip is searched as a sound,
  as in the other two paths: no speech recognition. Each request has its own user (no rate
  limit), channel (its answer is told apart), event id and file. Timed from sending the POST to
  (a) the reply posted: chat.postMessage received by the fake; (b) the reply complete: the
  answer's last Web API call received (files.completeUploadExternal: the result images,
  `--image-side` JPEGs kept in every store row, uploaded and shared in the reply's thread).
  Also split: the ack, POST to `service.search` called (Bolt, ack, file download), the search,
  search to chat.postMessage (reply built and posted), chat.postMessage to complete (uploads).

Every query's text is its own (same length in tokens as the others, so the same cost): nothing
could come from a cache. The overhead ratio is median(path) / median(floor); the goal is <= 1.10.
The overhead is also measured directly: the path's time minus the time the worker thread spent
in the model (`prepare` + `forward`) during that same query, over the floor.

Part 2, concurrency: 8 distinct text queries sent at once through the service (the worker
batches them) against the same 8 awaited one by one through the same service, for several
`batch_window_ms` values; the throughput ratio is time(one by one) / time(at once).

The store is a DeepLake dataset in a temporary directory holding `--rows` random unit vectors
of the model's dimension, each row with a JPEG (as an ingest keeps the image). Weights are
random (`build_imagebind`): the real compute cost.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.host import cpu_name, load_average  # noqa: E402
from core.config import MediaLimits, SearchSettings  # noqa: E402
from core.encoder import Encoder  # noqa: E402
from core.imagebind.model import build_imagebind  # noqa: E402
from core.imagebind.tokenizer import ClipTokenizer  # noqa: E402
from core.page_memory import PageMemory  # noqa: E402
from core.query import Query, Term  # noqa: E402
from core.service import SearchResult, SearchService  # noqa: E402
from core.store.base import Record  # noqa: E402
from core.store.deeplake_store import DeepLakeStore  # noqa: E402
from core.worker import EncoderWorker  # noqa: E402

if TYPE_CHECKING:
    import aiohttp

    from bot.slack.app import SlackBot
    from core.config import Settings
    from tests.fakes.slack import ApiCall, FakeSlack

MODALITIES = ("text", "image", "audio")
QUERY_TEXT = "a red sports car parked on a wet street at night"
# Words swapped into QUERY_TEXT so that every query has its own text (see `query_texts`).
COLOURS = ("red", "blue", "green", "white", "black", "grey", "yellow", "orange", "pink", "purple",
           "brown", "silver")
STREETS = ("wet", "dry", "dark", "quiet", "busy", "empty", "narrow", "wide", "long", "old")
TIMES = ("night", "dawn", "dusk", "noon")


@dataclass
class PathRow:
    modality: str
    floor_ms: float
    service_ms: float
    ratio: float
    paired_ratio: float  # median of service / floor over the adjacent pairs (steadier under load)
    worker_model_ms: float  # prepare + forward as run in the worker thread, inside the service call
    overhead_ms: float  # service minus worker_model_ms: what the path adds around the model
    overhead_ratio: float  # 1 + overhead_ms / floor_ms: the ratio with the model's time from the floor
    service_encode_ms: float
    service_search_ms: float
    floor_embed_ms: float
    floor_topk_ms: float


@dataclass
class ChatRow:
    """The Slack path against the floor: (a) the reply posted, (b) the reply complete."""

    modality: str
    request: str  # what was POSTed to /slack/events
    floor_ms: float
    posted_ms: float  # (a) POST sent -> chat.postMessage received by the fake Slack
    complete_ms: float  # (b) POST sent -> the answer's last Web API call (images shared)
    posted_ratio: float
    complete_ratio: float
    paired_posted_ratio: float  # median of (a) / floor over the queries of the same repeat
    paired_complete_ratio: float
    worker_model_ms: float  # prepare + forward in the worker thread during the request
    posted_overhead_ms: float  # (a) minus worker_model_ms
    complete_overhead_ms: float  # (b) minus worker_model_ms
    posted_overhead_ratio: float  # 1 + posted_overhead_ms / floor_ms
    complete_overhead_ratio: float  # 1 + complete_overhead_ms / floor_ms
    ack_ms: float  # POST sent -> the HTTP answer to it (Slack wants it within 3 s)
    to_search_ms: float  # POST sent -> service.search called (Bolt, ack, the file's download)
    search_ms: float  # service.search as the bot awaited it
    to_post_ms: float  # search returned -> chat.postMessage received (the reply built, sent)
    uploads_ms: float  # chat.postMessage -> complete (the result images uploaded and shared)
    images_uploaded: float
    api_calls: float  # Web API calls received by the fake per answer


@dataclass(frozen=True)
class Sample:
    """One query through one path: its time, the model's time inside it, the path's parts."""

    total_ms: float
    model_ms: float
    parts: dict[str, float]


Runner = Callable[[str, Any], Awaitable[Sample]]  # (modality, payload) -> one timed query


@dataclass
class ConcurrencyRow:
    window_ms: float
    one_by_one_ms: float
    at_once_ms: float
    ratio: float
    batch_sizes: dict[int, int]
    round_ratios: list[float]  # one by one / at once, per round (the two ran back to back)


def machine() -> str:
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads{load_average()}"
    )


# --------------------------------------------------------------------------------------------
# Inputs


def sample_jpeg(size: int = 512) -> bytes:
    """A 512x512 JPEG of smooth shapes and a little noise (a photo-like size, ~30-60 KB)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    pixels = np.stack([np.sin(6 * x + 1), np.cos(5 * y), np.sin(4 * (x + y))], axis=-1)
    pixels = (pixels + 1) * 110 + rng.normal(0, 8, (size, size, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def sample_ogg(seconds: float = 5.0) -> bytes:
    """A mono ogg/Opus clip (as a Discord voice message) of a 220 Hz tone; PyAV, imported here
    (through the test media factory) so runs without audio need no PyAV."""
    from tests.media_factory import make_audio

    return make_audio("ogg", seconds, kind="sine", frequency=220.0)


def build_store(path: str, dim: int, rows: int, model_name: str, image_side: int = 0) -> np.ndarray:
    """Write `rows` random unit vectors, each row keeping a `image_side` JPEG as its image (0:
    none; the same bytes in every row); return the unit matrix (the floor searches it)."""
    rng = np.random.default_rng(42)
    data = rng.standard_normal((rows, dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    jpeg = sample_jpeg(image_side) if image_side else None
    writer = DeepLakeStore.create(path, model_name=model_name, dim=dim)
    records = [
        Record(id=f"img{i:05d}", embedding=data[i], text=f"picture {i}", source="bench",
               image_jpeg=jpeg, width=image_side, height=image_side)
        for i in range(rows)
    ]
    for start in range(0, rows, 1500):  # a few commits (about 100 MB each at 512x512)
        writer.append(records[start : start + 1500])
    writer.close()
    return data


def query_texts(tokenizer: ClipTokenizer) -> Iterator[str]:
    """Distinct texts (QUERY_TEXT first) of QUERY_TEXT's length in tokens, which sets the text
    tower's cost: every query gets its own text, so nothing could come from a cache."""
    want = len(tokenizer.encode(QUERY_TEXT))
    for when, street, colour in itertools.product(TIMES, STREETS, COLOURS):
        text = f"a {colour} sports car parked on a {street} street at {when}"
        if len(tokenizer.encode(text)) == want:
            yield text


def exact_top(unit: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = unit @ (q / np.linalg.norm(q))
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top], kind="stable")]


# --------------------------------------------------------------------------------------------
# Part 1: one query at a time


class TimedEncoder:
    """The encoder as the worker sees it, adding up the time spent in `prepare` and `forward`.

    Under load from other work, the model's own time varies more from call to call than the
    path around it costs; subtracting it per call measures the overhead itself.
    """

    def __init__(self, encoder: Encoder):
        self.inner = encoder
        self.model_s = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def prepare(self, modality: str, payload: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.inner.prepare(modality, payload)
        finally:
            self.model_s += time.perf_counter() - start

    def forward(self, modality: str, batch: Any) -> np.ndarray:
        start = time.perf_counter()
        try:
            return self.inner.forward(modality, batch)
        finally:
            self.model_s += time.perf_counter() - start


def floor_once(encoder: Encoder, unit: np.ndarray, modality: str, payload: Any, k: int) -> Sample:
    start = time.perf_counter()
    vector = encoder.embed(modality, [payload])[0]
    embedded = time.perf_counter()
    exact_top(unit, vector, k)
    done = time.perf_counter()
    embed_ms, topk_ms = (embedded - start) * 1000, (done - embedded) * 1000
    return Sample(embed_ms + topk_ms, embed_ms, {"embed": embed_ms, "topk": topk_ms})


async def service_once(
    service: SearchService, timed: TimedEncoder, modality: str, payload: Any, limit: int
) -> Sample:
    """The whole search, the model inside it, and the service's timings."""
    model_before = timed.model_s
    start = time.perf_counter()
    result = await service.search(Query((Term(modality, payload),), limit=limit, audio_as="sound"))
    total = (time.perf_counter() - start) * 1000
    return Sample(total, (timed.model_s - model_before) * 1000, result.timings_ms)


async def bench_paths(
    paths: dict[str, Runner],
    inputs: Callable[[str], Any],
    modalities: list[str],
    repeats: int,
) -> dict[str, dict[str, list[Sample]]]:
    """Per modality and path, `repeats` queries (after one warm-up each); the order of the
    paths is reversed every other repeat (A B C C B A ...). `inputs` gives each query's payload."""
    names = list(paths)
    out: dict[str, dict[str, list[Sample]]] = {}
    for modality in modalities:
        for name in names:  # warm-up of every path
            await paths[name](modality, inputs(modality))
        samples: dict[str, list[Sample]] = {name: [] for name in names}
        for i in range(repeats):
            for name in names if i % 2 == 0 else names[::-1]:
                samples[name].append(await paths[name](modality, inputs(modality)))
        out[modality] = samples
        print_modality(modality, samples)
    return out


def path_row(modality: str, floor: list[Sample], service: list[Sample]) -> PathRow:
    med = statistics.median
    floor_ms = med(s.total_ms for s in floor)
    service_ms = med(s.total_ms for s in service)
    overhead = med(s.total_ms - s.model_ms for s in service)
    return PathRow(
        modality,
        floor_ms,
        service_ms,
        service_ms / floor_ms,
        med(s.total_ms / f.total_ms for s, f in zip(service, floor, strict=True)),
        med(s.model_ms for s in service),
        overhead,
        1 + overhead / floor_ms,
        med(s.parts.get("encode", float("nan")) for s in service),
        med(s.parts.get("search", float("nan")) for s in service),
        med(s.parts["embed"] for s in floor),
        med(s.parts["topk"] for s in floor),
    )


def chat_row(modality: str, floor: list[Sample], slack: list[Sample]) -> ChatRow:
    med = statistics.median
    floor_ms = med(s.total_ms for s in floor)
    posted = [s.total_ms for s in slack]
    complete = [s.parts["complete"] for s in slack]
    posted_overhead = med(s.total_ms - s.model_ms for s in slack)
    complete_overhead = med(s.parts["complete"] - s.model_ms for s in slack)

    def part(name: str) -> float:
        return med(s.parts[name] for s in slack)

    return ChatRow(
        modality=modality,
        request=SLACK_REQUESTS[modality],
        floor_ms=floor_ms,
        posted_ms=med(posted),
        complete_ms=med(complete),
        posted_ratio=med(posted) / floor_ms,
        complete_ratio=med(complete) / floor_ms,
        paired_posted_ratio=med(p / f.total_ms for p, f in zip(posted, floor, strict=True)),
        paired_complete_ratio=med(c / f.total_ms for c, f in zip(complete, floor, strict=True)),
        worker_model_ms=med(s.model_ms for s in slack),
        posted_overhead_ms=posted_overhead,
        complete_overhead_ms=complete_overhead,
        posted_overhead_ratio=1 + posted_overhead / floor_ms,
        complete_overhead_ratio=1 + complete_overhead / floor_ms,
        ack_ms=part("ack"),
        to_search_ms=part("to_search"),
        search_ms=part("search"),
        to_post_ms=part("to_post"),
        uploads_ms=part("uploads"),
        images_uploaded=part("images_uploaded"),
        api_calls=part("api_calls"),
    )


def print_modality(modality: str, samples: dict[str, list[Sample]]) -> None:
    row = path_row(modality, samples["floor"], samples["service"])
    print(
        f"  {modality:5s} floor {row.floor_ms:9.1f} ms  service {row.service_ms:9.1f} ms"
        f"  ratio {row.ratio:.3f} (paired {row.paired_ratio:.3f}); model in the worker "
        f"{row.worker_model_ms:.1f} ms, overhead {row.overhead_ms:.1f} ms -> {row.overhead_ratio:.3f}",
        flush=True,
    )
    if "slack" in samples:
        chat = chat_row(modality, samples["floor"], samples["slack"])
        print(
            f"  {'':5s} slack (a) posted {chat.posted_ms:9.1f} ms ratio {chat.posted_ratio:.3f} "
            f"(paired {chat.paired_posted_ratio:.3f}), (b) complete {chat.complete_ms:9.1f} ms ratio "
            f"{chat.complete_ratio:.3f} (paired {chat.paired_complete_ratio:.3f}); model in the worker "
            f"{chat.worker_model_ms:.1f} ms, overhead (a) {chat.posted_overhead_ms:.1f} ms -> "
            f"{chat.posted_overhead_ratio:.3f}, (b) {chat.complete_overhead_ms:.1f} ms -> "
            f"{chat.complete_overhead_ratio:.3f}",
            flush=True,
        )


# --------------------------------------------------------------------------------------------
# Part 1, the chat path: the Slack bot's HTTP endpoint, on 127.0.0.1


SLACK_TOKEN = "xoxb-bench-query"
SLACK_SECRET = "bench-query-signing-secret"
FORM = "application/x-www-form-urlencoded"
SLACK_FILES = {"image": ("photo.jpg", "image/jpeg"), "audio": ("clip.ogg", "audio/ogg")}
SLACK_REQUESTS = {
    "text": "signed /search <text> limit:N slash command",
    "image": "signed app_mention event with photo.jpg (image/jpeg) as a Slack file",
    "audio": "signed app_mention event with clip.ogg (audio/ogg) as a Slack file, searched as a sound",
}


def slack_importable() -> bool:
    try:
        for name in ("slack_bolt", "slack_sdk"):
            importlib.import_module(name)
    except ImportError:
        return False
    return True


class SearchSpy:
    """The service as the bot holds it, noting when each search starts and ends."""

    def __init__(self, service: SearchService):
        self.inner = service
        self.spans: list[tuple[float, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def search(self, query: Query) -> SearchResult:
        start = time.perf_counter()
        try:
            return await self.inner.search(query)
        finally:
            self.spans.append((start, time.perf_counter()))


class ErrorToldError(RuntimeError):
    """The bot answered a benchmark query with an error message."""


@dataclass
class SlackPath:
    """Queries sent to the real Bolt app as Slack sends them; their answers read at the fake."""

    fake: FakeSlack
    bot: SlackBot
    http: aiohttp.ClientSession
    spy: SearchSpy
    timed: TimedEncoder
    limit: int
    timeout_s: float
    serial: int = 0

    @property
    def url(self) -> str:
        from bot.slack.app import EVENTS_PATH

        assert self.bot.address is not None
        return f"http://127.0.0.1:{self.bot.address[1]}{EVENTS_PATH}"

    def request(self, modality: str, payload: Any, n: int) -> tuple[str, str]:
        """The body and content type of query `n`: its own user, channel, event id and file."""
        from tests.fakes.slack import BOT_USER_ID, command_body, event_payload, message_event

        user, channel = f"U0BENCH{n:05d}", f"C0BENCH{n:05d}"
        if modality == "text":
            body = command_body(f"{payload} limit:{self.limit}", user=user, channel=channel,
                                response_url=self.fake.response_url(f"bench-{n}"))
            return body, FORM
        name, mimetype = SLACK_FILES[modality]
        file = self.fake.add_file(name, payload, mimetype)
        event = message_event("app_mention", f"<@{BOT_USER_ID}> limit:{self.limit}", user=user,
                              channel=channel, ts=f"1700000000.{n:06d}", files=[file])
        return json.dumps(event_payload(event, event_id=f"Ev0BENCH{n:06d}")), "application/json"

    async def once(self, modality: str, payload: Any) -> Sample:
        """Send one query, wait (bounded) for its reply and for the bot to finish it."""
        from tests.fakes.slack import signed_headers

        self.serial += 1
        body, content_type = self.request(modality, payload, self.serial)
        headers = {"Content-Type": content_type, **signed_headers(SLACK_SECRET, body)}
        first_call, first_search, model_before = len(self.fake.calls), len(self.spy.spans), self.timed.model_s
        async with asyncio.timeout(self.timeout_s):
            start = time.perf_counter()
            async with self.http.post(self.url, data=body.encode(), headers=headers) as response:
                await response.read()
                status = response.status
            acked = time.perf_counter()
            if status != 200:
                raise RuntimeError(f"/slack/events answered HTTP {status} to a {modality} query")
            await self.fake.wait_for(lambda: self.answered(first_call), timeout=self.timeout_s)
            await self.bot.drain()  # the uploads of the result images
        calls = self.fake.calls[first_call:]
        self.check(calls)
        ((search_start, search_end),) = self.spy.spans[first_search:]
        (posted,) = [c.at for c in calls if c.method == "chat.postMessage" and c.status == 200]
        last = max(c.at for c in calls)

        def ms(a: float, b: float) -> float:
            return (b - a) * 1000

        return Sample(ms(start, posted), (self.timed.model_s - model_before) * 1000, {
            "complete": ms(start, last),
            "ack": ms(start, acked),
            "to_search": ms(start, search_start),
            "search": ms(search_start, search_end),
            "to_post": ms(search_end, posted),
            "uploads": ms(posted, last),
            "images_uploaded": float(sum(c.method == "files.getUploadURLExternal" for c in calls)),
            "api_calls": float(len(calls)),
        })

    def answered(self, first_call: int) -> bool:
        """A reply posted, or an error told (to the user only, or to the command's response_url)."""
        calls = self.fake.calls[first_call:]
        return bool(self.fake.responses) or any(
            c.method in ("chat.postMessage", "chat.postEphemeral") and c.status == 200 for c in calls
        )

    def check(self, calls: list[ApiCall]) -> None:
        told = [str(c.params.get("text")) for c in calls if c.method == "chat.postEphemeral"]
        told += [str(r.get("text")) for r in self.fake.responses]
        if told:
            raise ErrorToldError(f"the bot answered with an error: {told[0]}")


def slack_settings(fake: FakeSlack, search: SearchSettings) -> Settings:
    """The bot's settings: the fake's Web API and file host, HTTP on 127.0.0.1 (a free port),
    the benchmark's search settings; no speech recogniser, no health endpoint, no refreshes."""
    from core.config import Settings

    return Settings.model_validate({
        "search": search.model_dump(),
        "slack": {"api_base_url": fake.api_url, "host": "127.0.0.1", "port": 0, "file_hosts": [fake.host]},
        "speech": {"engine": "none"},
        "ops": {"health_port": 0, "refresh_seconds": 0},
    })


@asynccontextmanager
async def slack_path(
    service: SearchService, timed: TimedEncoder, search: SearchSettings, limit: int, timeout_s: float
) -> AsyncIterator[SlackPath]:
    """The fake Slack and the bot (holding `service`) running on 127.0.0.1 until exit."""
    import aiohttp

    from bot.slack.app import running_slack_bot
    from core.config import Secrets
    from tests.fakes.slack import FakeSlack

    secrets = Secrets(slack_bot_token=SLACK_TOKEN, slack_signing_secret=SLACK_SECRET)
    spy = SearchSpy(service)
    async with FakeSlack(bot_token=SLACK_TOKEN) as fake:
        settings = slack_settings(fake, search)
        async with (
            running_slack_bot(spy, settings, secrets, socket_mode=False) as bot,  # type: ignore[arg-type]
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http,
        ):
            yield SlackPath(fake, bot, http, spy, timed, limit, timeout_s)



def thread_check(encoder: Encoder, payloads: dict[str, Any], modalities: list[str], repeats: int) -> dict[str, dict[str, float]]:
    """`encoder.embed` in the main thread against the same in one long-lived other thread (as
    the worker runs it), alternated: does torch compute slower outside the main thread?"""
    jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
    answers: queue.SimpleQueue[float] = queue.SimpleQueue()

    def serve() -> None:
        while (job := jobs.get()) is not None:
            answers.put(job())

    def timed(modality: str) -> float:
        start = time.perf_counter()
        encoder.embed(modality, [payloads[modality]])
        return (time.perf_counter() - start) * 1000

    thread = threading.Thread(target=serve, name="thread-check", daemon=True)
    thread.start()
    out = {}
    try:
        for modality in modalities:
            main_ms, other_ms = [timed(modality)], []
            jobs.put(lambda m=modality: timed(m))
            answers.get()  # warm-up of both
            main_ms.clear()
            for i in range(repeats):
                for where in ("main", "other") if i % 2 == 0 else ("other", "main"):
                    if where == "main":
                        main_ms.append(timed(modality))
                    else:
                        jobs.put(lambda m=modality: timed(m))
                        other_ms.append(answers.get())
            out[modality] = {
                "main_ms": statistics.median(main_ms),
                "other_thread_ms": statistics.median(other_ms),
                "paired_ratio": statistics.median(o / m for o, m in zip(other_ms, main_ms, strict=True)),
            }
            print(f"  {modality:5s} main thread {out[modality]['main_ms']:9.1f} ms, other thread "
                  f"{out[modality]['other_thread_ms']:9.1f} ms, paired ratio {out[modality]['paired_ratio']:.3f}",
                  flush=True)
    finally:
        jobs.put(None)
        thread.join()
    return out


# --------------------------------------------------------------------------------------------
# Part 2: concurrency


async def bench_concurrency(
    encoder: Encoder,
    store: DeepLakeStore,
    settings: SearchSettings,
    pages: PageMemory,
    windows: list[float],
    rounds: int,
    queries: int,
    limit: int,
) -> list[ConcurrencyRow]:
    out = []
    serial = 0

    def texts() -> list[str]:
        nonlocal serial
        serial += 1
        # Distinct texts every time: nothing can come from a cache.
        return [f"{QUERY_TEXT}, variant {serial}.{i}" for i in range(queries)]

    for window in windows:
        async with EncoderWorker(encoder, batch_window_ms=window, max_batch_size=queries) as worker:
            service = SearchService(worker, store, settings, text_cache_size=0, pages=pages)
            await service.search(Query((Term("text", "warm-up"),), limit=limit))
            worker.batch_sizes.clear()
            one_by_one, at_once = [], []
            for r in range(rounds):
                for which in ("serial", "gather") if r % 2 == 0 else ("gather", "serial"):
                    batch = [Query((Term("text", t),), limit=limit) for t in texts()]
                    start = time.perf_counter()
                    if which == "serial":
                        for query in batch:
                            await service.search(query)
                        one_by_one.append((time.perf_counter() - start) * 1000)
                    else:
                        await asyncio.gather(*(service.search(q) for q in batch))
                        at_once.append((time.perf_counter() - start) * 1000)
        row = ConcurrencyRow(
            window,
            statistics.median(one_by_one),
            statistics.median(at_once),
            statistics.median(one_by_one) / statistics.median(at_once),
            dict(sorted(worker.batch_sizes.items())),
            [s / g for s, g in zip(one_by_one, at_once, strict=True)],
        )
        print(
            f"  window {window:5.1f} ms: one by one {row.one_by_one_ms:9.1f} ms, at once "
            f"{row.at_once_ms:9.1f} ms, x{row.ratio:.2f}  (forward passes by batch size: "
            f"{row.batch_sizes})",
            flush=True,
        )
        out.append(row)
    return out


# --------------------------------------------------------------------------------------------


def worker_thread_torch_threads() -> int:
    """torch's intra-op thread count as seen from a fresh thread (the worker's view)."""
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    modalities = args.modalities.split(",")
    windows = [float(w) for w in args.windows.split(",")] if args.windows else []
    print(f"machine: {machine()}")
    print(f"torch threads: main {torch.get_num_threads()}, a new thread {worker_thread_torch_threads()}")
    start = time.perf_counter()
    model = build_imagebind(args.model)
    device = torch.device(args.device)
    encoder = Encoder(model, args.model, device, getattr(torch, args.dtype), MediaLimits())
    print(f"built {args.model} ({args.dtype} on {device}) with random weights in "
          f"{time.perf_counter() - start:.1f} s")
    makers = {"text": lambda: QUERY_TEXT, "image": sample_jpeg, "audio": sample_ogg}
    payloads = {m: makers[m]() for m in modalities}
    print("inputs: " + ", ".join(
        f"{m} {len(v):,} {'chars' if m == 'text' else 'bytes'}" for m, v in payloads.items()
    ) + " (a 512x512 JPEG, a 5 s ogg/Opus clip)")

    settings = SearchSettings()  # folding at cosine 0.95, 4 candidates per result
    results: dict[str, Any] = {"machine": machine(), "model": args.model, "dtype": args.dtype,
                               "device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
                               "rows": args.rows, "repeats": args.repeats, "image_side": args.image_side}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = str(Path(tmp) / "store")
        start = time.perf_counter()
        unit = build_store(path, encoder.dim, args.rows, args.model, args.image_side)
        store = DeepLakeStore.open(path, expect_model=args.model, mode="exact")
        pages = PageMemory(Path(tmp) / "pages.sqlite")
        kept = f", each with a {args.image_side}x{args.image_side} JPEG" if args.image_side else ""
        print(f"store: {args.rows:,} rows of {encoder.dim}-d{kept} in {time.perf_counter() - start:.1f} s\n")
        try:
            if args.thread_check:
                print(f"model in the main thread against another thread, median of {args.repeats}:", flush=True)
                results["thread_check"] = thread_check(encoder, payloads, modalities, args.repeats)
                print()
            if args.repeats > 0:
                results.update(await query_paths(args, encoder, store, settings, pages, unit, payloads, modalities))
            if windows:
                print(f"\nconcurrency: {args.queries} distinct texts, median of {args.rounds} rounds:", flush=True)
                conc = await bench_concurrency(
                    encoder, store, settings, pages, windows, args.rounds, args.queries, args.limit
                )
                results["concurrency"] = [asdict(r) for r in conc]
        finally:
            pages.close()
            store.close()
    return results


async def query_paths(
    args: argparse.Namespace,
    encoder: Encoder,
    store: DeepLakeStore,
    settings: SearchSettings,
    pages: PageMemory,
    unit: np.ndarray,
    payloads: dict[str, Any],
    modalities: list[str],
) -> dict[str, Any]:
    """Part 1: floor, service and (with `--slack`) the Slack bot, over one encoder and store."""
    paths = "floor, service, slack" if args.slack else "floor, service"
    print(f"query path ({paths}), median of {args.repeats} (batch window {args.window} ms):", flush=True)
    texts = query_texts(encoder.tokenizer)

    def inputs(modality: str) -> Any:
        if modality != "text":
            return payloads[modality]
        text = next(texts, None)
        if text is None:
            raise SystemExit("more text queries than distinct texts of the same length: lower --repeats")
        return text

    timed = TimedEncoder(encoder)
    worker = EncoderWorker(timed, batch_window_ms=args.window, max_batch_size=8)  # type: ignore[arg-type]
    async with worker:
        service = SearchService(worker, store, settings, text_cache_size=0, pages=pages)

        async def floor(modality: str, payload: Any) -> Sample:
            return floor_once(encoder, unit, modality, payload, args.limit)

        async def through_service(modality: str, payload: Any) -> Sample:
            return await service_once(service, timed, modality, payload, args.limit)

        runners: dict[str, Runner] = {"floor": floor, "service": through_service}
        if not args.slack:
            samples = await bench_paths(runners, inputs, modalities, args.repeats)
        else:
            async with slack_path(service, timed, settings, args.limit, args.slack_timeout) as chat:
                samples = await bench_paths({**runners, "slack": chat.once}, inputs, modalities, args.repeats)
    out: dict[str, Any] = {
        "query_path": [asdict(path_row(m, s["floor"], s["service"])) for m, s in samples.items()],
        "query_path_window_ms": args.window,
    }
    if args.slack:
        out["chat_path"] = [asdict(chat_row(m, s["floor"], s["slack"])) for m, s in samples.items()]
    return out


def print_tables(results: dict[str, Any]) -> None:
    if "query_path" in results:
        print("\n| modality | floor ms | service ms | service / floor | paired ratio | model in worker ms "
              "| overhead ms | 1 + overhead / floor | service search ms | floor top-k ms |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in results["query_path"]:
            print(
                f"| {r['modality']} | {r['floor_ms']:.1f} | {r['service_ms']:.1f} | {r['ratio']:.3f} "
                f"| {r['paired_ratio']:.3f} | {r['worker_model_ms']:.1f} | {r['overhead_ms']:.1f} "
                f"| {r['overhead_ratio']:.3f} | {r['service_search_ms']:.2f} | {r['floor_topk_ms']:.2f} |"
            )
    if "chat_path" in results:
        print_chat_table(results["chat_path"])
    if "concurrency" in results:
        print("\n| batch window ms | 8 one by one ms | 8 at once ms | throughput ratio | forward passes (size: count) |")
        print("|---:|---:|---:|---:|---|")
        for r in results["concurrency"]:
            sizes = ", ".join(f"{k}: {v}" for k, v in r["batch_sizes"].items())
            print(f"| {r['window_ms']:g} | {r['one_by_one_ms']:.0f} | {r['at_once_ms']:.0f} | {r['ratio']:.2f} | {sizes} |")
        best = max(results["concurrency"], key=lambda r: r["ratio"])
        pooled = statistics.median(x for r in results["concurrency"] for x in r["round_ratios"])
        print(f"\nbest window: {best['window_ms']:g} ms (x{best['ratio']:.2f}); all windows pooled, "
              f"median of the per-round ratios: x{pooled:.2f}")


def print_chat_table(rows: list[dict[str, Any]]) -> None:
    """The Slack path: (a) POST to the reply posted, (b) POST to the reply complete (images
    shared), each against the floor; then where the time goes."""
    print("\nSlack path (POST to /slack/events -> (a) chat.postMessage, (b) the answer's last Web API call):")
    print("\n| modality | floor ms | (a) posted ms | (a) / floor | (a) paired | (b) complete ms | (b) / floor "
          "| (b) paired | model in worker ms | (a) overhead ms | 1 + (a) overhead / floor "
          "| (b) overhead ms | 1 + (b) overhead / floor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['modality']} | {r['floor_ms']:.1f} | {r['posted_ms']:.1f} | {r['posted_ratio']:.3f} "
            f"| {r['paired_posted_ratio']:.3f} | {r['complete_ms']:.1f} | {r['complete_ratio']:.3f} "
            f"| {r['paired_complete_ratio']:.3f} | {r['worker_model_ms']:.1f} | {r['posted_overhead_ms']:.1f} "
            f"| {r['posted_overhead_ratio']:.3f} | {r['complete_overhead_ms']:.1f} "
            f"| {r['complete_overhead_ratio']:.3f} |"
        )
    print("\n| modality | ack ms | POST to search ms | search ms | search to posted ms | posted to complete ms "
          "| images uploaded | Web API calls |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['modality']} | {r['ack_ms']:.1f} | {r['to_search_ms']:.1f} | {r['search_ms']:.1f} "
            f"| {r['to_post_ms']:.1f} | {r['uploads_ms']:.1f} | {r['images_uploaded']:g} | {r['api_calls']:g} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="imagebind_huge", choices=["imagebind_huge", "tiny"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--image-side", type=int, default=512,
                        help="side of the JPEG every store row keeps (the Slack replies upload those "
                             "of their results); 0: rows keep no image")
    parser.add_argument("--repeats", type=int, default=5, help="queries per path and modality (median); 0 skips part 1")
    parser.add_argument("--modalities", default=",".join(MODALITIES))
    parser.add_argument("--window", type=float, default=5.0, help="batch_window_ms for part 1 (the default config)")
    parser.add_argument("--slack", action=argparse.BooleanOptionalAction, default=None,
                        help="the Slack path in part 1 (default: when slack_bolt imports)")
    parser.add_argument("--slack-timeout", type=float, default=300.0,
                        help="seconds one Slack query may take, its uploads included")
    parser.add_argument("--windows", default="0,2,5,10,20", help="batch windows for part 2 (empty skips it)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 8 queries per window and mode")
    parser.add_argument("--queries", type=int, default=8, help="concurrent queries in part 2")
    parser.add_argument("--limit", type=int, default=5, help="results per page")
    parser.add_argument("--thread-check", action="store_true",
                        help="first time the model in the main thread against another thread")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary store goes")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.slack is None:
        args.slack = slack_importable()
    elif args.slack and not slack_importable():
        parser.error("--slack needs slack_bolt and slack_sdk (pip install -e '.[slack]')")
    started = time.perf_counter()
    results = asyncio.run(main_async(args))
    print_tables(results)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
