"""Search latency with near-duplicate folding and prompt filters against a plain search.

    python benchmarks/bench_quality.py                 # 6k and 100k rows, about a minute

A collection of `--sizes` rows where every picture has two near-copies (cosine > 0.99, like
lexica's images that share a prompt), searched through `SearchService.page` (what a chat
button runs: store search, folding, cut-off; no encoder) for a page of 5:

- store only: `DeepLakeStore.search` for 6 rows (the floor),
- plain: the service with folding off,
- folded: folding at cosine 0.95 over 4x candidates (every page of 5 needs 18+ rows),
- filter 1/1000 and 1/2: the prompt must contain a word that 1 row in 1000 (or every other row)
  has, with folding on.
Ratios are against "plain" in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_store import machine, texts_for  # noqa: E402
from core.config import SearchSettings  # noqa: E402
from core.page_memory import PageMemory, SavedQuery  # noqa: E402
from core.service import SearchService  # noqa: E402
from core.store.base import Record  # noqa: E402
from core.store.deeplake_store import DeepLakeStore  # noqa: E402

COPIES = 3


def near_duplicate_data(n: int, dim: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    bases = rng.standard_normal((n // COPIES + 1, dim), dtype=np.float32)
    bases /= np.linalg.norm(bases, axis=1, keepdims=True)
    data = np.repeat(bases, COPIES, axis=0)[:n]
    data += 0.003 * rng.standard_normal(data.shape, dtype=np.float32)
    qs = bases[rng.integers(0, len(bases), queries)] + 0.03 * rng.standard_normal((queries, dim), dtype=np.float32)
    return data, qs


async def median_ms(calls: Sequence[Callable[[], Awaitable[object]]]) -> float:
    times = []
    for call in calls:
        start = time.perf_counter()
        await call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def bench_size(n: int, args: argparse.Namespace, workdir: Path) -> list[tuple[str, float, str]]:
    data, queries = near_duplicate_data(n, args.dim, args.queries, seed=n)
    texts = texts_for(n)
    path = str(workdir / f"quality-{n}")
    writer = DeepLakeStore.create(path, model_name="bench", dim=args.dim)
    for lo in range(0, n, 50_000):
        writer.append([Record(id=str(i), embedding=data[i], text=texts[i]) for i in range(lo, min(n, lo + 50_000))])
    writer.close()
    store = DeepLakeStore.open(path, mode="exact")
    store.search(queries[0], 1)  # load the matrix

    def service(collapse: float) -> SearchService:
        settings = SearchSettings(collapse_cosine=collapse)
        return SearchService(None, store, settings, pages=PageMemory(None))  # type: ignore[arg-type]

    plain, folded = service(1.0), service(0.95)

    def keys(svc: SearchService, include: tuple[str, ...] = ()) -> list[str]:
        return [
            svc.pages.save(SavedQuery(q / np.linalg.norm(q), include, (), 5, "bench", "", -1.0)) for q in queries
        ]

    rare = [(f"tag{j:04d}",) for j in range(len(queries))]
    rows: list[tuple[str, float, str]] = []
    floor = await median_ms([lambda q=q: asyncio.to_thread(store.search, q, 6) for q in queries])
    rows.append(("store only (6 rows)", floor, ""))
    plain_keys = keys(plain)
    await plain.page(plain_keys[0], 0)
    base = await median_ms([lambda k=k: plain.page(k, 0) for k in plain_keys])
    rows.append(("plain page of 5", base, ""))
    folded_keys = keys(folded)
    page = await folded.page(folded_keys[0], 0)
    shown = len(page.items), sum(1 + i.similar for i in page.items)
    ms = await median_ms([lambda k=k: folded.page(k, 0) for k in folded_keys])
    rows.append(("folded page of 5", ms, f"{shown[0]} groups shown, holding {shown[1]} rows"))
    rare_keys = [folded.pages.save(SavedQuery(q / np.linalg.norm(q), w, (), 5, "b", "", -1.0))
                 for q, w in zip(queries, rare, strict=True)]
    ms = await median_ms([lambda k=k: folded.page(k, 0) for k in rare_keys])
    rows.append(("folded + filter 1/1000 (cold masks)", ms, ""))
    ms = await median_ms([lambda k=k: folded.page(k, 0) for k in rare_keys])
    rows.append(("folded + filter 1/1000 (warm)", ms, ""))
    half = keys(folded, ("red",))
    await folded.page(half[0], 0)
    ms = await median_ms([lambda k=k: folded.page(k, 0) for k in half])
    rows.append(("folded + filter 1/2 (warm)", ms, ""))
    store.close()
    return [(name, ms, note + ("" if name.startswith("store") else f"  x plain {ms / base:.2f}"))
            for name, ms, note in rows]


async def main_async(args: argparse.Namespace) -> None:
    print(f"machine: {machine()}")
    print(f"dim {args.dim}, page of 5, median of {args.queries} queries\n")
    print("| rows | search | median ms | note |")
    print("|---:|---|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(s.replace("_", "")) for s in args.sizes.split(",")]:
            for name, ms, note in await bench_size(n, args, Path(tmp)):
                print(f"| {n:,} | {name} | {ms:.2f} | {note.strip()} |", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="6000,100000")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--queries", type=int, default=9)
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
