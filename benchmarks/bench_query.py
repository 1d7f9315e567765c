"""The query path against the model's own cost, and what micro-batching buys under load.

    python benchmarks/bench_query.py                       # imagebind_huge, random weights
    python benchmarks/bench_query.py --model tiny --repeats 15 --json out.json

Part 1, one query at a time (per modality: a text, a 512x512 JPEG's bytes, a 5 s ogg/Opus
clip's bytes). Two paths on the same inputs, alternated (A B B A ...) so that load from other
work on the machine falls on both:

- floor: `encoder.embed(modality, [payload])` (decode + prepare + forward, synchronous, in the
  calling thread) plus an exact numpy top-k over the store's unit matrix: what any search must
  cost;
- service: `SearchService.search(Query(...))`: the encoder worker thread (queue, batching
  window), fusion, the page memory (SQLite file), the store's exact search with near-duplicate
  folding, the cut-off, result items. The text cache is off (`text_cache_size=0`).

The overhead ratio is median(service) / median(floor); the goal is <= 1.10.

Part 2, concurrency: 8 distinct text queries sent at once through the service (the worker
batches them) against the same 8 awaited one by one through the same service, for several
`batch_window_ms` values; the throughput ratio is time(one by one) / time(at once).

The store is a DeepLake dataset in a temporary directory holding `--rows` random unit vectors
of the model's dimension. Weights are random (`build_imagebind`): the real compute cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.host import cpu_name, load_average  # noqa: E402
from core.config import MediaLimits, SearchSettings  # noqa: E402
from core.deeplake_store import DeepLakeStore  # noqa: E402
from core.encoder import Encoder  # noqa: E402
from core.imagebind.model import build_imagebind  # noqa: E402
from core.page_memory import PageMemory  # noqa: E402
from core.query import Query, Term  # noqa: E402
from core.service import SearchService  # noqa: E402
from core.store import Record  # noqa: E402
from core.worker import EncoderWorker  # noqa: E402

MODALITIES = ("text", "image", "audio")
QUERY_TEXT = "a red sports car parked on a wet street at night"


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


def build_store(path: str, dim: int, rows: int, model_name: str) -> np.ndarray:
    """Write `rows` random unit vectors; return the unit matrix (the floor searches it)."""
    rng = np.random.default_rng(42)
    data = rng.standard_normal((rows, dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    writer = DeepLakeStore.create(path, model_name=model_name, dim=dim)
    records = [
        Record(id=f"img{i:05d}", embedding=data[i], text=f"picture {i}", source="bench")
        for i in range(rows)
    ]
    writer.append(records)
    writer.close()
    return data


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


def floor_once(encoder: Encoder, unit: np.ndarray, modality: str, payload: Any, k: int) -> tuple[float, float]:
    start = time.perf_counter()
    vector = encoder.embed(modality, [payload])[0]
    embedded = time.perf_counter()
    exact_top(unit, vector, k)
    done = time.perf_counter()
    return (embedded - start) * 1000, (done - embedded) * 1000


async def service_once(
    service: SearchService, timed: TimedEncoder, modality: str, payload: Any, limit: int
) -> tuple[float, float, dict[str, float]]:
    """Milliseconds of the whole search, of the model inside it, and the service's timings."""
    model_before = timed.model_s
    start = time.perf_counter()
    result = await service.search(Query((Term(modality, payload),), limit=limit, audio_as="sound"))
    total = (time.perf_counter() - start) * 1000
    return total, (timed.model_s - model_before) * 1000, result.timings_ms


async def bench_paths(
    service: SearchService,
    timed: TimedEncoder,
    encoder: Encoder,
    unit: np.ndarray,
    payloads: dict[str, Any],
    modalities: list[str],
    repeats: int,
    limit: int,
) -> list[PathRow]:
    rows = []
    for modality in modalities:
        payload = payloads[modality]
        floor_once(encoder, unit, modality, payload, limit)  # warm-up of both paths
        await service_once(service, timed, modality, payload, limit)
        floor_ms, embed_ms, topk_ms, service_ms, encode_ms, search_ms = [], [], [], [], [], []
        model_ms: list[float] = []
        for i in range(repeats):
            for which in ("floor", "service") if i % 2 == 0 else ("service", "floor"):
                if which == "floor":
                    embed, topk = floor_once(encoder, unit, modality, payload, limit)
                    floor_ms.append(embed + topk)
                    embed_ms.append(embed)
                    topk_ms.append(topk)
                else:
                    total, model, timings = await service_once(service, timed, modality, payload, limit)
                    service_ms.append(total)
                    model_ms.append(model)
                    encode_ms.append(timings.get("encode", float("nan")))
                    search_ms.append(timings.get("search", float("nan")))
        med = statistics.median
        row = PathRow(
            modality,
            med(floor_ms),
            med(service_ms),
            med(service_ms) / med(floor_ms),
            med(s / f for s, f in zip(service_ms, floor_ms, strict=True)),
            med(model_ms),
            med(s - m for s, m in zip(service_ms, model_ms, strict=True)),
            1 + med(s - m for s, m in zip(service_ms, model_ms, strict=True)) / med(floor_ms),
            med(encode_ms),
            med(search_ms),
            med(embed_ms),
            med(topk_ms),
        )
        print(
            f"  {modality:5s} floor {row.floor_ms:9.1f} ms  service {row.service_ms:9.1f} ms"
            f"  ratio {row.ratio:.3f} (paired {row.paired_ratio:.3f}); model in the worker "
            f"{row.worker_model_ms:.1f} ms, overhead {row.overhead_ms:.1f} ms -> {row.overhead_ratio:.3f}",
            flush=True,
        )
        rows.append(row)
    return rows


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
                               "rows": args.rows, "repeats": args.repeats}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = str(Path(tmp) / "store")
        start = time.perf_counter()
        unit = build_store(path, encoder.dim, args.rows, args.model)
        store = DeepLakeStore.open(path, expect_model=args.model, mode="exact")
        pages = PageMemory(Path(tmp) / "pages.sqlite")
        print(f"store: {args.rows:,} rows of {encoder.dim}-d in {time.perf_counter() - start:.1f} s\n")
        try:
            if args.thread_check:
                print(f"model in the main thread against another thread, median of {args.repeats}:", flush=True)
                results["thread_check"] = thread_check(encoder, payloads, modalities, args.repeats)
                print()
            if args.repeats > 0:
                print(f"query path, median of {args.repeats} (batch window {args.window} ms):", flush=True)
                timed = TimedEncoder(encoder)
                worker = EncoderWorker(timed, batch_window_ms=args.window, max_batch_size=8)  # type: ignore[arg-type]
                async with worker:
                    service = SearchService(worker, store, settings, text_cache_size=0, pages=pages)
                    rows = await bench_paths(service, timed, encoder, unit, payloads, modalities, args.repeats, args.limit)
                results["query_path"] = [asdict(r) for r in rows]
                results["query_path_window_ms"] = args.window
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="imagebind_huge", choices=["imagebind_huge", "tiny"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=5, help="queries per path and modality (median); 0 skips part 1")
    parser.add_argument("--modalities", default=",".join(MODALITIES))
    parser.add_argument("--window", type=float, default=5.0, help="batch_window_ms for part 1 (the default config)")
    parser.add_argument("--windows", default="0,2,5,10,20", help="batch windows for part 2 (empty skips it)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of 8 queries per window and mode")
    parser.add_argument("--queries", type=int, default=8, help="concurrent queries in part 2")
    parser.add_argument("--limit", type=int, default=5, help="results per page")
    parser.add_argument("--thread-check", action="store_true",
                        help="first time the model in the main thread against another thread")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary store goes")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = asyncio.run(main_async(args))
    print_tables(results)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
