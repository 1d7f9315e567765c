"""Search latency of the vector store against plain numpy and DeepLake's own search.

    python benchmarks/bench_store.py                      # 6k and 100k rows, about 2-3 minutes
    python benchmarks/bench_store.py --sizes 6000,100000,1000000 --no-index

For each size and each kind of vectors (Gaussian noise; clustered, closer to real embeddings)
it writes a DeepLake dataset through `DeepLakeStore`, then times k-nearest searches (median of
`--queries` different queries) and measures recall@k against the exact answer:

- numpy exact: unit matrix @ q, argpartition (the floor: what any exact search costs),
- store exact: `DeepLakeStore.search` in exact mode, unfiltered and filtered,
- store index: `DeepLakeStore.search` in index mode, on the approximate index the store keeps
  beside the dataset (`core.store.ann`: IVF of 8-bit codes, exact re-rank from the float32
  vectors memory-mapped), unfiltered and filtered; its build time and the recall it measured
  on itself when built,
- TQL scan: DeepLake's `ORDER BY COSINE_SIMILARITY ... LIMIT k` without an index,
- DeepLake's own vector index, forced to be built (build time reported), up to
  `--max-deeplake-index-rows`.

Memory (Linux), each in a fresh child process so that nothing this one allocated and freed
is counted: what opening the store and its first search add to the child's resident memory
(the exact table; the index's table without vectors and its mapped pages), the peak a build
adds (VmHWM), and what opening DeepLake's indexed dataset and its first TQL query add.

Filters: "1/1000" keeps one row in a thousand (a word no other row contains), "1/2" half of
them; "cold" is the first search with a word (its mask is computed), "warm" a repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import deeplake

from benchmarks.host import cpu_name, proc_status
from core.store.base import Record
from core.store.deeplake_store import DeepLakeStore


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


def memory_child(path: str, what: str, query: list[float], k: int) -> dict[str, float]:
    """(child) Resident MiB added by the exact table (`what="table"`), by building the index
    (its peak, `"index"`), or by opening the indexed dataset for a query (`"index-query"`)."""
    q = np.asarray(query, dtype=np.float32)
    before = proc_status()["VmRSS"]
    if what == "table":
        store = DeepLakeStore.open(path, mode="exact")
        store.search(q, k)
        return {"table_mib": proc_status()["VmRSS"] - before}
    if what == "index-query":
        tql_rows(deeplake.open_read_only(path), q, k)
        return {"index_query_mib": proc_status()["VmRSS"] - before}
    if what == "ann":
        store = DeepLakeStore.open(path, mode="index")
        store.search(q, k)
        store.search(q, k, include=["red"])
        return {"ann_mib": proc_status()["VmRSS"] - before}
    writer = DeepLakeStore.open(path, read_only=False, mode="index")
    if what == "ann-build":
        build_s = writer.build_index()
        meta = json.loads(Path(path + ".index", "meta.json").read_text())
        reader_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the column reader
        return {"build_s": build_s, "build_peak_mib": proc_status()["VmHWM"] - before, "reader_mib": reader_mib,
                "nprobe": meta["nprobe"], "nlist": meta["nlist"], "self_recall": meta["recall"],
                "fit": meta["fit"]}
    build_s = writer.build_deeplake_index()
    return {"build_s": build_s, "build_peak_mib": proc_status()["VmHWM"] - before}


def measure_in_child(path: str, what: str, query: np.ndarray, k: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", path, what, json.dumps(query.tolist()), str(k)],
        capture_output=True, text=True, check=True, timeout=3600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


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


@dataclass
class Truths:
    """The exact answers the other methods are scored against."""

    all: list[np.ndarray]
    rare: list[np.ndarray]  # filter 1/1000
    red: list[np.ndarray]  # filter 1/2


def write_dataset(path: str, data: np.ndarray, texts: list[str]) -> float:
    start = time.perf_counter()
    writer = DeepLakeStore.create(path, model_name="bench", dim=data.shape[1])
    for lo in range(0, len(data), 50_000):
        writer.append(
            [
                Record(id=str(i), embedding=data[i], text=texts[i], source="bench")
                for i in range(lo, min(len(data), lo + 50_000))
            ]
        )
    writer.close()
    return time.perf_counter() - start


def rare_words(queries: np.ndarray) -> list[str]:
    return [f"tag{j:04d}" for j in range(len(queries))]


def filtered(s: DeepLakeStore, queries: np.ndarray, words: Sequence[str], k: int) -> list[Callable[[], list[int]]]:
    return [
        lambda q=q, w=w: [int(h.id) for h in s.search(q, k, include=[w])]
        for q, w in zip(queries, words, strict=True)
    ]


def bench_numpy(data: np.ndarray, queries: np.ndarray, k: int, add: Callable[..., None], write_s: float) -> Truths:
    """numpy's exact search; the exact answers. Scales `data` to unit rows in place."""
    n = len(data)
    unit = data
    unit /= np.linalg.norm(data, axis=1, keepdims=True)  # in place: 4 GB fewer at 1M rows
    truths = Truths(
        all=[exact_top(unit, q, k) for q in queries],
        rare=[exact_top(unit, q, k, np.arange(j, n, 1000)) for j, q in enumerate(queries)],
        red=[exact_top(unit, q, k, np.arange(1, n, 2)) for q in queries],
    )
    ms, got = timed([lambda q=q: exact_top(unit, q, k) for q in queries])
    add("numpy exact", ms, recall(got, truths.all), f"write {write_s:.1f} s")
    return truths


def bench_exact(path: str, shape: tuple[int, int], queries: np.ndarray, truths: Truths, k: int,
                add: Callable[..., None]) -> None:
    """The store's exact search (unfiltered, filtered)."""
    n, dim = shape
    table = measure_in_child(path, "table", queries[0], k)
    start = time.perf_counter()
    store = DeepLakeStore.open(path, mode="exact")
    load_s = time.perf_counter() - start
    ms, got = timed([lambda q=q: [int(h.id) for h in store.search(q, k)] for q in queries])
    add("store exact", ms, recall(got, truths.all),
        f"resident +{table['table_mib']:.0f} MiB (the vectors: {n * dim * 4 / 2**20:.0f} MiB); load {load_s:.1f} s")
    rare = rare_words(queries)
    ms, got = timed(filtered(store, queries, rare, k))
    add("store exact, filter 1/1000, cold", ms, recall(got, truths.rare))
    ms, got = timed(filtered(store, queries, rare, k))
    add("store exact, filter 1/1000, warm", ms, recall(got, truths.rare))
    store.search(queries[0], k, include=["red"])
    ms, got = timed(filtered(store, queries, ["red"] * len(queries), k))
    add("store exact, filter 1/2, warm", ms, recall(got, truths.red))
    store.close()


def bench_ann(path: str, queries: np.ndarray, truths: Truths, k: int, add: Callable[..., None]) -> None:
    """The store's approximate index: built in a child (time, peak), searched here."""
    built = measure_in_child(path, "ann-build", queries[0], k)
    resident = measure_in_child(path, "ann", queries[0], k)
    store = DeepLakeStore.open(path, mode="index")
    first = time.perf_counter()
    store.search(queries[0], k)
    first_ms = (time.perf_counter() - first) * 1000
    ms, got = timed([lambda q=q: [int(h.id) for h in store.search(q, k)] for q in queries])
    add("store index", ms, recall(got, truths.all),
        f"build {built['build_s']:.1f} s (peak +{built['build_peak_mib']:.0f} MiB, reading child"
        f" {built['reader_mib']:.0f} MiB);"
        f" {built['nlist']} lists, nprobe {built['nprobe']}, self-check recall"
        f" {built['self_recall']:.2f}{'' if built['fit'] else ' (unfit: auto stays exact)'};"
        f" resident +{resident['ann_mib']:.0f} MiB; first query {first_ms:.0f} ms")
    ms, got = timed(filtered(store, queries, rare_words(queries), k))
    add("store index, filter 1/1000, cold", ms, recall(got, truths.rare), "exact over the rows that pass")
    ms, got = timed(filtered(store, queries, rare_words(queries), k))
    add("store index, filter 1/1000, warm", ms, recall(got, truths.rare))
    store.search(queries[0], k, include=["red"])
    ms, got = timed(filtered(store, queries, ["red"] * len(queries), k))
    add("store index, filter 1/2, warm", ms, recall(got, truths.red), "filter during the scan")
    store.close()


def bench_deeplake(path: str, n: int, queries: np.ndarray, truths: Truths, args: argparse.Namespace,
                   add: Callable[..., None]) -> None:
    """DeepLake's own search: a TQL scan, then (unless --no-index) its vector index."""
    k = args.k
    if n <= args.max_scan_rows:
        raw = deeplake.open_read_only(path)
        ms, got = timed([lambda q=q: tql_rows(raw, q, k) for q in queries])
        add("TQL scan (no index)", ms, recall(got, truths.all))
    if args.no_index or n > args.max_deeplake_index_rows:
        return
    built = measure_in_child(path, "deeplake-index", queries[0], k)  # the child builds and commits it
    built |= measure_in_child(path, "index-query", queries[0], k)
    raw = deeplake.open_read_only(path)
    first = time.perf_counter()
    tql_rows(raw, queries[0], k)
    first_ms = (time.perf_counter() - first) * 1000
    ms, got = timed([lambda q=q: tql_rows(raw, q, k) for q in queries])
    add(
        "TQL with clustered index",
        ms,
        recall(got, truths.all),
        f"build {built['build_s']:.1f} s (peak +{built['build_peak_mib']:.0f} MiB), first query"
        f" {first_ms:.0f} ms (resident +{built['index_query_mib']:.0f} MiB)",
    )


def bench_one(n: int, kind: str, args: argparse.Namespace, workdir: Path) -> list[Row]:
    out: list[Row] = []

    def add(method: str, ms: float, rec: float, note: str = "") -> None:
        out.append(Row(n, kind, method, ms, rec, note))

    path = str(workdir / f"{kind}-{n}")
    data, queries = make_data(n, args.dim, kind, args.queries, seed=n)
    write_s = write_dataset(path, data, texts_for(n))
    truths = bench_numpy(data, queries, args.k, add, write_s)
    shape = data.shape
    del data  # GBs at 1M rows: not held while the store loads its table or builds an index
    if not args.no_exact:
        bench_exact(path, shape, queries, truths, args.k, add)
    bench_ann(path, queries, truths, args.k, add)
    bench_deeplake(path, n, queries, truths, args, add)
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
    parser.add_argument("--no-exact", action="store_true", help="skip the store's exact search")
    parser.add_argument(
        "--max-deeplake-index-rows", type=int, default=2_000_000,
        help="skip building DeepLake's index above this size (14 minutes at 1M rows)",
    )
    parser.add_argument(
        "--max-scan-rows", type=int, default=200_000, help="skip TQL scans above this size"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="where datasets are written")
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        path, what, query, k = args.memory_child
        print(json.dumps(memory_child(path, what, json.loads(query), int(k))))
        return
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",")]
    kinds = args.kinds.split(",")

    print(f"machine: {machine()}")
    print(f"dim {args.dim}, k {args.k}, median of {args.queries} queries\n", flush=True)
    rows: list[Row] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n in sizes:
            for kind in kinds:
                done = bench_one(n, kind, args, Path(tmp))
                rows += done
                elapsed = time.perf_counter() - started
                print(f"  done {kind} {n:,} rows ({elapsed:.0f} s)", flush=True)
                for r in done:  # as they come: a long run that is stopped keeps its figures
                    print(f"    {r.method}: {r.ms:.2f} ms, recall {r.recall:.2f}; {r.note}", flush=True)
                shutil.rmtree(Path(tmp) / f"{kind}-{n}", ignore_errors=True)
                shutil.rmtree(Path(tmp) / f"{kind}-{n}.index", ignore_errors=True)
    numpy_ms = {(r.rows, r.data): r.ms for r in rows if r.method == "numpy exact"}
    print()
    print_table(rows, numpy_ms, args.k)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
