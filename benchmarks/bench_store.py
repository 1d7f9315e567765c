"""Search latency of the vector store against plain numpy and DeepLake's own search.

    python benchmarks/bench_store.py                      # 6k and 100k rows, about 2-3 minutes
    python benchmarks/bench_store.py --sizes 6000,100000,1000000 --no-index

For each size and each kind of vectors (Gaussian noise; clustered, closer to real embeddings)
it writes a DeepLake dataset through `DeepLakeStore`, then times k-nearest searches (median of
`--queries` different queries) and measures recall@k against the exact answer:

- numpy exact: unit matrix @ q, argpartition (the floor: what any exact search costs),
- store exact: `DeepLakeStore.search` in exact mode, unfiltered and filtered,
- TQL scan: DeepLake's `ORDER BY COSINE_SIMILARITY ... LIMIT k` without an index,
- store index: `DeepLakeStore.search` in index mode (TQL over-fetch, exact re-rank),
- the same two after forcing DeepLake's vector index to be built (build time reported).

Filters: "1/1000" keeps one row in a thousand (a word no other row contains), "1/2" half of
them; "cold" is the first search with a word (its mask is computed), "warm" a repeat.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import deeplake  # noqa: E402

from benchmarks.host import cpu_name  # noqa: E402

from core.deeplake_store import DeepLakeStore  # noqa: E402
from core.store import Record  # noqa: E402


@dataclass
class Row:
    rows: int
    data: str
    method: str
    ms: float
    recall: float | None
    note: str = ""


def machine() -> str:
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()},"
        f" numpy {np.__version__}, deeplake {deeplake.__version__}"
    )


def make_data(
    n: int, dim: int, kind: str, queries: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.standard_normal((n, dim), dtype=np.float32), rng.standard_normal(
            (queries, dim), dtype=np.float32
        )
    centers = rng.standard_normal((max(16, n // 500), dim), dtype=np.float32)
    data = centers[rng.integers(0, len(centers), n)]
    data += 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
    qs = centers[rng.integers(0, len(centers), queries)]
    qs += 0.5 * rng.standard_normal((queries, dim), dtype=np.float32)
    return data, qs


def texts_for(n: int) -> list[str]:
    """Row i holds 'tag<i mod 1000>' (a filter keeping 1/1000) and 'red' on every other row."""
    return [f"picture {i} tag{i % 1000:04d}" + (" red" if i % 2 else " blue") for i in range(n)]


def exact_top(
    unit: np.ndarray, q: np.ndarray, k: int, rows: np.ndarray | None = None
) -> np.ndarray:
    """Plain numpy exact top-k (row numbers, best first), optionally over a subset of rows."""
    sub = unit if rows is None else unit[rows]
    scores = sub @ (q / np.linalg.norm(q))
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    return top if rows is None else rows[top]


def timed(calls: Sequence[Callable[[], Sequence[int]]]) -> tuple[float, list[Sequence[int]]]:
    """Median milliseconds over the calls, and their answers."""
    times, answers = [], []
    for call in calls:
        start = time.perf_counter()
        answers.append(call())
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), answers


def recall(answers: Sequence[Sequence[int]], truths: Sequence[np.ndarray]) -> float:
    return statistics.mean(
        len(set(map(int, a)) & set(map(int, t))) / max(1, len(t))
        for a, t in zip(answers, truths, strict=True)
    )


def tql_rows(ds: deeplake.ReadOnlyDataset, q: np.ndarray, k: int) -> list[int]:
    vector = ", ".join(format(float(x), ".9g") for x in q)
    view = ds.query(
        f"SELECT id ORDER BY COSINE_SIMILARITY(embedding, ARRAY[{vector}]) DESC LIMIT {k}"
    )
    return [int(i) for i in view["id"][:]]


def bench_one(n: int, kind: str, args: argparse.Namespace, workdir: Path) -> list[Row]:
    out: list[Row] = []
    k, dim = args.k, args.dim
    data, queries = make_data(n, dim, kind, args.queries, seed=n)
    texts = texts_for(n)
    path = str(workdir / f"{kind}-{n}")

    start = time.perf_counter()
    writer = DeepLakeStore.create(path, model_name="bench", dim=dim)
    for lo in range(0, n, 50_000):
        writer.append(
            [
                Record(id=str(i), embedding=data[i], text=texts[i], source="bench")
                for i in range(lo, min(n, lo + 50_000))
            ]
        )
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    store = DeepLakeStore.open(path, mode="exact")
    load_s = time.perf_counter() - start

    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    truth = [exact_top(unit, q, k) for q in queries]

    def add(method: str, ms: float, rec: float, note: str = "") -> None:
        out.append(Row(n, kind, method, ms, rec, note))

    ms, got = timed([lambda q=q: exact_top(unit, q, k) for q in queries])
    add("numpy exact", ms, recall(got, truth), f"write {write_s:.1f} s, store load {load_s:.1f} s")
    ms, got = timed([lambda q=q: [int(h.id) for h in store.search(q, k)] for q in queries])
    add("store exact", ms, recall(got, truth))

    rare = [f"tag{j:04d}" for j in range(len(queries))]
    rare_rows = [np.arange(j, n, 1000) for j in range(len(queries))]
    rare_truth = [exact_top(unit, q, k, r) for q, r in zip(queries, rare_rows, strict=True)]
    red_truth = [exact_top(unit, q, k, np.arange(1, n, 2)) for q in queries]

    def filtered(s: DeepLakeStore, words: Sequence[str]) -> list[Callable[[], list[int]]]:
        return [
            lambda q=q, w=w: [int(h.id) for h in s.search(q, k, include=[w])]
            for q, w in zip(queries, words, strict=True)
        ]

    ms, got = timed(filtered(store, rare))
    add("store exact, filter 1/1000, cold", ms, recall(got, rare_truth))
    ms, got = timed(filtered(store, rare))
    add("store exact, filter 1/1000, warm", ms, recall(got, rare_truth))
    store.search(queries[0], k, include=["red"])
    ms, got = timed(filtered(store, ["red"] * len(queries)))
    add("store exact, filter 1/2, warm", ms, recall(got, red_truth))

    if n <= args.max_scan_rows:
        raw = deeplake.open_read_only(path)
        ms, got = timed([lambda q=q: tql_rows(raw, q, k) for q in queries])
        add("TQL scan (no index)", ms, recall(got, truth))
        via = DeepLakeStore.open(path, mode="index")
        ms, got = timed([lambda q=q: [int(h.id) for h in via.search(q, k)] for q in queries])
        add("store index mode, no index", ms, recall(got, truth), "TQL scan + exact re-rank")
        ms, got = timed(filtered(via, rare))
        add("store index mode, filter 1/1000", ms, recall(got, rare_truth), "TQL WHERE ILIKE")

    if not args.no_index:
        build_s = writer.build_index()
        raw = deeplake.open_read_only(path)
        first = time.perf_counter()
        tql_rows(raw, queries[0], k)
        first_ms = (time.perf_counter() - first) * 1000
        ms, got = timed([lambda q=q: tql_rows(raw, q, k) for q in queries])
        add(
            "TQL with clustered index",
            ms,
            recall(got, truth),
            f"build {build_s:.1f} s, first query {first_ms:.0f} ms",
        )
        via = DeepLakeStore.open(path, mode="index")
        ms, got = timed([lambda q=q: [int(h.id) for h in via.search(q, k)] for q in queries])
        add("store index mode, with index", ms, recall(got, truth), "400 candidates re-ranked")
        via = DeepLakeStore.open(path, mode="index", index_candidates=100)
        ms, got = timed([lambda q=q: [int(h.id) for h in via.search(q, k)] for q in queries])
        add("store index mode, with index", ms, recall(got, truth), "100 candidates re-ranked")
    writer.close()
    store.close()
    return out


def print_table(rows: list[Row], numpy_ms: dict[tuple[int, str], float], k: int) -> None:
    header = f"| rows | data | method | median ms | recall@{k} | x numpy | note |"
    print(header)
    print("|---:|---|---|---:|---:|---:|---|")
    for r in rows:
        ratio = r.ms / numpy_ms[(r.rows, r.data)]
        rec = "-" if r.recall is None else f"{r.recall:.2f}"
        cells = [f"{r.rows:,}", r.data, r.method, f"{r.ms:.2f}", rec, f"{ratio:.1f}", r.note]
        print("| " + " | ".join(cells) + " |")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="6000,100000", help="comma-separated row counts")
    parser.add_argument("--kinds", default="gaussian,clustered")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=9, help="queries per method (median)")
    parser.add_argument("--no-index", action="store_true", help="skip building DeepLake's index")
    parser.add_argument(
        "--max-scan-rows", type=int, default=200_000, help="skip TQL scans above this size"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where datasets are written")
    args = parser.parse_args(argv)
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",")]
    kinds = args.kinds.split(",")

    print(f"machine: {machine()}")
    print(f"dim {args.dim}, k {args.k}, median of {args.queries} queries\n", flush=True)
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n in sizes:
            for kind in kinds:
                rows += bench_one(n, kind, args, Path(tmp))
                elapsed = time.perf_counter() - started
                print(f"  done {kind} {n:,} rows ({elapsed:.0f} s)", flush=True)
    numpy_ms = {(r.rows, r.data): r.ms for r in rows if r.method == "numpy exact"}
    print()
    print_table(rows, numpy_ms, args.k)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
