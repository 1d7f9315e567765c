"""Channel memory (issue #18): where it lives, and what indexing costs the queries.

    python benchmarks/bench_memory.py                     # both parts, scaled down (~5 min)
    python benchmarks/bench_memory.py layout --tenants 50 --rows 10000 --big 500000
    python benchmarks/bench_memory.py load --model tiny --share 0.1,0.25 --batch 1,4

Part `layout`: the two ways to keep many servers' memory, with the same exact search code
(`core.memory.store.MemoryStore`) so only the layout differs:

- per tenant: one DeepLake dataset per server (what the store does);
- shared: one dataset for every server, the server written into the channel column
  ("<tenant>.<channel>"), each search filtered to the asking server's channels.

`--tenants` servers of `--rows` images (5 channels each) and one server of `--big` images.
For each layout: write time, the first search of a small server after opening (cold: what
must be read first), search latency p50 for a small and for the big server (warm, k=10,
median of `--queries`), deleting one message in a small server (DeepLake row deletion, commit,
and the new in-memory snapshot), erasing one small server, and the disk the layout uses.

Part `load`: interactive text queries through `SearchService` (unique texts, so no cache hits;
open loop, random gaps of mean `--gap-ms`) alternately without and with channel memory
indexing images (640x480 JPEGs through `ChannelMemory.index`, background work of the encoder
worker) in blocks, for each background share and batch size given; latency ratio
with/without (mean, p50, p95) and indexing throughput, side by side in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.host import cpu_name, load_average
from core.config import MediaLimits, MemorySettings, ModelSettings, SearchSettings
from core.encoder import Encoder
from core.memory.channels import ChannelRegistry
from core.memory.memory import ChannelMemory
from core.memory.model import PostedImage, Tenant
from core.memory.store import MemoryRecord, MemoryStore
from core.query import Query, Term
from core.service import SearchService
from core.store.base import Record
from core.store.deeplake_store import DeepLakeStore
from core.worker import EncoderWorker

CHANNELS = 5
BATCH = 50_000


# ---------------------------------------------------------------------- layout


def tiny_jpeg() -> bytes:
    from PIL import Image

    from core.media.image import encode_jpeg

    return encode_jpeg(Image.new("RGB", (8, 8), (120, 30, 200)), quality=50)


def records(tenant: int, rows: int, dim: int, *, shared: bool, seed: int, thumb: bytes) -> list[MemoryRecord]:
    """`rows` images of server `tenant`: clustered vectors, 5 channels, 2 images a message."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 64, rows)] + 0.3 * rng.normal(size=(rows, dim)).astype(np.float32)
    out = []
    for i in range(rows):
        channel = f"c{i % CHANNELS}"
        out.append(MemoryRecord(
            id=f"{tenant}-{i // 2}/{i % 2}", embedding=vectors[i], text="", message=f"{tenant}-{i // 2}",
            channel=f"t{tenant}.{channel}" if shared else channel, item=str(i % 2), author=f"u{i % 97}",
            posted_at=1.7e9 + i, link="https://discord.com/channels/x/y/z", thumbnail=thumb, width=640, height=480,
        ))
    return out


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def run_layout(args: argparse.Namespace, root: Path) -> list[tuple[str, str, str]]:
    thumb = tiny_jpeg()
    rng = np.random.default_rng(99)
    queries = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    sizes = [(t, args.rows) for t in range(args.tenants)] + [(args.tenants, args.big)]
    results: dict[str, dict[str, str]] = {}
    for layout in ("per tenant", "shared"):
        shared = layout == "shared"
        path = root / layout.replace(" ", "-")
        store = MemoryStore(path, model_name="bench", dim=args.dim, max_open=args.tenants + 2)

        def tenant_of(t: int, shared: bool = shared) -> Tenant:
            return Tenant("discord", "all" if shared else str(t))

        def channels_of(t: int, shared: bool = shared) -> set[str]:
            return {f"t{t}.c{c}" if shared else f"c{c}" for c in range(CHANNELS)}

        start = time.perf_counter()
        for t, rows in sizes:
            for lo in range(0, rows, BATCH):
                batch = records(t, min(BATCH, rows - lo), args.dim, shared=shared, seed=t * 1000 + lo, thumb=thumb)
                if lo:  # distinct ids per batch
                    batch = [MemoryRecord(**{**r.__dict__, "id": f"{r.id}-{lo}", "message": f"{r.message}-{lo}"})
                             for r in batch]
                store.add(tenant_of(t), batch)
        write_s = time.perf_counter() - start
        store.close()

        cold = MemoryStore(path, model_name="bench", dim=args.dim, max_open=args.tenants + 2)
        cold_ms = timed(lambda c=cold: c.search(tenant_of(0), queries[0], 10, channels=channels_of(0)))

        def p50(t: int, store: MemoryStore = cold) -> float:
            store.search(tenant_of(t), queries[0], 10, channels=channels_of(t))  # warm
            return statistics.median(
                timed(lambda q=q: store.search(tenant_of(t), q, 10, channels=channels_of(t))) for q in queries
            )

        small_ms, big_ms = p50(1), p50(args.tenants)
        delete_ms = timed(lambda c=cold: c.delete(tenant_of(2), message="2-7"))
        if shared:
            erase_ms = timed(lambda s=cold: [s.delete(tenant_of(3), channel=c) for c in channels_of(3)])
        else:
            erase_ms = timed(lambda c=cold: c.drop(tenant_of(3)))
        disk = folder_mb(path)
        cold.close()
        results[layout] = {
            "write all (s)": f"{write_s:.1f}",
            "first search of a small server after opening (ms)": f"{cold_ms:,.0f}",
            f"search p50, server of {args.rows:,} (ms)": f"{small_ms:.2f}",
            f"search p50, server of {args.big:,} (ms)": f"{big_ms:.2f}",
            "delete one message of a small server (ms)": f"{delete_ms:,.0f}",
            "erase one small server (ms)": f"{erase_ms:,.0f}",
            "disk (MiB)": f"{disk:,.0f}",
        }
        shutil.rmtree(path, ignore_errors=True)
    return [(k, results["per tenant"][k], results["shared"][k]) for k in results["per tenant"]]


# ---------------------------------------------------------------------- load


def photo(seed: int) -> bytes:
    from PIL import Image

    from core.media.image import encode_jpeg

    rng = np.random.default_rng(seed)
    return encode_jpeg(Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)), quality=85)


async def run_load(args: argparse.Namespace, root: Path, share: float, batch: int) -> dict[str, float]:
    encoder = Encoder.load(ModelSettings(name=args.model), MediaLimits(), progress=False)
    collection = DeepLakeStore.create(str(root / f"collection-{share}-{batch}"), model_name=args.model,
                                      dim=encoder.dim, mode="exact")
    rng = np.random.default_rng(0)
    collection.append([Record(id=f"r{i}", embedding=v) for i, v in enumerate(
        rng.normal(size=(args.collection, encoder.dim)).astype(np.float32))])
    photos = [photo(i) for i in range(8)]
    tenant = Tenant("discord", "1")
    async with EncoderWorker(encoder, background_batch_size=batch, background_share=share) as worker:
        store = MemoryStore(root / f"memory-{share}-{batch}", model_name=args.model, dim=encoder.dim)
        memory = ChannelMemory(store, ChannelRegistry(None), worker, MemorySettings(enabled=True), MediaLimits())
        await memory.enable(tenant, "c1", by="bench")
        service = SearchService(worker, collection, SearchSettings(collapse_cosine=1.0), memory=memory)
        ids = itertools.count()
        indexed = [0]

        async def producer(stop: asyncio.Event) -> None:
            while not stop.is_set():
                n = next(ids)
                report = await memory.index([PostedImage(tenant, "c1", f"m{n}", str(j), "u", 1.7e9, "l", photos[j])
                                             for j in range(8)])
                indexed[0] += report.indexed

        async def one(i: int, out: list[float]) -> None:
            start = time.perf_counter()
            await service.search(Query((Term("text", f"a photo of a thing number {i}"),), limit=10))
            out.append((time.perf_counter() - start) * 1000)

        async def stream(n: int, counter: itertools.count, out: list[float]) -> None:
            tasks = []
            for _ in range(n):
                tasks.append(asyncio.create_task(one(next(counter), out)))
                await asyncio.sleep(rng.exponential(args.gap_ms / 1000))
            await asyncio.gather(*tasks)

        counter = itertools.count()
        await stream(10, counter, [])  # warm-up
        idle: list[float] = []
        loaded: list[float] = []
        loaded_s = 0.0
        during = 0
        for _ in range(args.blocks):
            await stream(args.block, counter, idle)
            stop = asyncio.Event()
            producers = [asyncio.create_task(producer(stop)) for _ in range(2)]
            await asyncio.sleep(0.2)  # the background queue fills
            before, start = indexed[0], time.perf_counter()
            await stream(args.block, counter, loaded)
            loaded_s += time.perf_counter() - start
            during += indexed[0] - before  # what was written while the block's queries ran
            stop.set()
            await asyncio.gather(*producers)
        # indexing alone, for its throughput without queries
        stop = asyncio.Event()
        alone_before, start = indexed[0], time.perf_counter()
        producers = [asyncio.create_task(producer(stop)) for _ in range(2)]
        await asyncio.sleep(args.alone_s)
        stop.set()
        await asyncio.gather(*producers)
        alone_rate = (indexed[0] - alone_before) / (time.perf_counter() - start)
    collection.close()

    def p(values: list[float], q: float) -> float:
        return float(np.percentile(values, q))

    return {
        "idle mean": statistics.fmean(idle), "loaded mean": statistics.fmean(loaded),
        "idle p50": p(idle, 50), "loaded p50": p(loaded, 50), "idle p95": p(idle, 95), "loaded p95": p(loaded, 95),
        "queries": len(loaded), "images/s while queried": during / loaded_s if loaded_s else 0.0,
        "images/s alone": alone_rate,
    }


# ---------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", choices=["layout", "load", "both"], default="both")
    parser.add_argument("--dim", type=int, default=256, help="embedding size for the layout part (1024: ImageBind)")
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=500_000)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--model", default="tiny", choices=["tiny", "imagebind_huge"])
    parser.add_argument("--share", default="0.1,0.25", help="background shares to compare")
    parser.add_argument("--batch", default="1,4", help="background batch sizes to compare")
    parser.add_argument("--gap-ms", type=float, default=50.0, help="mean gap between queries (open loop)")
    parser.add_argument("--block", type=int, default=40, help="queries per block")
    parser.add_argument("--blocks", type=int, default=4, help="blocks of each kind, alternated")
    parser.add_argument("--collection", type=int, default=5000, help="rows of the shared collection")
    parser.add_argument("--alone-s", type=float, default=3.0)
    args = parser.parse_args()
    print(f"# {cpu_name()}{load_average()}")
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        root = Path(tmp)
        if args.part in ("layout", "both"):
            print(f"\n## layout: {args.tenants} servers x {args.rows:,} images + one of {args.big:,}, dim {args.dim}\n")
            print("| measure | per tenant | shared | ")
            print("|---|---:|---:|")
            for name, per_tenant, shared in run_layout(args, root):
                print(f"| {name} | {per_tenant} | {shared} |", flush=True)
        if args.part in ("load", "both"):
            print(f"\n## queries with and without indexing, model {args.model}, "
                  f"{args.blocks}x{args.block} queries each, mean gap {args.gap_ms:.0f} ms\n")
            print("| share | batch | mean ms idle / loaded (ratio) | p50 ms (ratio) | p95 ms (ratio) | images/s "
                  "while queried | images/s alone |")
            print("|---:|---:|---|---|---|---:|---:|")
            for share in (float(s) for s in args.share.split(",")):
                for batch in (int(b) for b in args.batch.split(",")):
                    r = asyncio.run(run_load(args, root, share, batch))
                    cells = [f"{r[f'idle {k}']:.1f} / {r[f'loaded {k}']:.1f} ({r[f'loaded {k}'] / r[f'idle {k}']:.2f})"
                             for k in ("mean", "p50", "p95")]
                    print(f"| {share} | {batch} | {' | '.join(cells)} | {r['images/s while queried']:.1f} | "
                          f"{r['images/s alone']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
