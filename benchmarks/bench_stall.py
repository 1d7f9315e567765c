"""Stall: how long other users' queries wait while a hostile input is processed (issue 17).

    python benchmarks/bench_stall.py                   # about 2 minutes before the fixes, 1 after
    python benchmarks/bench_stall.py --rows 20000 --scans 1000 --window-s 120
    python benchmarks/bench_stall.py --write-bomb /tmp/bomb.jpg     # then, in an older checkout:
    python benchmarks/bench_stall.py --bomb /tmp/bomb.jpg

A DeepLake dataset of `--rows` random 64-d vectors (the `tiny` model's width) is opened the way
the bots open it (`open_search_service`: the tiny model, the encoder worker, the default search
settings, folding near-duplicates at 0.95). A stream of ordinary text queries, one every
`--every-ms` (open loop: a stalled query does not delay the next one's start; each a new text, so
each goes through the encoder worker), is timed:

- alone,
- while 4 "Next page" requests at offset 19,990 run (what a hand-made button id can ask),
- while 4 at offset 490 run (the deepest page of 10 once offsets are capped at 500),
- while 1 image query with a progressive JPEG scan bomb runs (`jpeg_scan_bomb` of
  `tests/bad_inputs.py`: 6000x6000 grey, its last scan, an AC refinement over every block,
  repeated `--scans` times, 59 bytes and ~20 ms of decoding each before the fix of item 2).

A hostile phase lasts until its requests are answered or refused, at most `--window-s` (then
the rest is reported as not answered). Each phase runs in a process of its own, which exits
without waiting for hostile requests still running, so that they cannot slow the next phase. Reported per phase: the stream's p50 and max latency, the worst delay of an ordinary query
(its max minus the p50 alone), the ratio of the p50s, and how long each hostile request took.
The goal of issue 17: other users' queries delayed by at most 1 s; each hostile input <= 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.host import cpu_name
from core.config import Settings
from core.errors import SearchAllError
from core.query import Query, Term
from core.service import SearchService
from core.startup import open_search_service
from core.store.base import Record
from core.store.deeplake_store import DeepLakeStore

DIM = 64  # the tiny model's embedding width
PAGE = 10
DEEP_PAGES = 4

# ---------------------------------------------------------------------- the hostile JPEG


def hostile_jpeg(args: argparse.Namespace) -> bytes:
    """`--bomb FILE`, else the bad-input corpus's scan bomb (imported here only: a checkout from
    before issue 17 lacks it, and is benchmarked with `--bomb` written by a newer one)."""
    if args.bomb:
        return Path(args.bomb).read_bytes()
    from tests.bad_inputs import jpeg_scan_bomb

    return jpeg_scan_bomb(6000, args.scans)


# ---------------------------------------------------------------------- the measurement


@dataclass
class Phase:
    name: str
    latencies_ms: list[float]
    hostile_s: list[float]  # per hostile request; inf: not answered within the window
    hostile_note: str = ""

    def p50(self) -> float:
        return statistics.median(self.latencies_ms)


async def stream_while(
    service: SearchService, hostile: Sequence[Callable[[], Awaitable[object]]], args: argparse.Namespace,
    counter: list[int],
) -> tuple[list[float], list[float], str]:
    """Ordinary text queries every `args.every_ms` until the hostile calls end (or `min_s` when
    there are none), bounded by `args.window_s`; their latencies, each hostile call's seconds,
    and how the hostile calls ended."""
    latencies: list[float] = []
    hostile_s = [float("inf")] * len(hostile)
    notes: list[str] = []

    async def ordinary() -> None:
        counter[0] += 1
        start = time.perf_counter()
        await service.search(Query((Term("text", f"an ordinary query number {counter[0]}"),), limit=PAGE))
        latencies.append((time.perf_counter() - start) * 1000)

    async def timed(i: int, call: Callable[[], Awaitable[object]]) -> None:
        start = time.perf_counter()
        try:
            result = await call()
            notes.append(f"answered ({len(getattr(result, 'items', []))} items)")
        except SearchAllError as exc:
            notes.append(f"refused: {str(exc)[:80]}")
        hostile_s[i] = time.perf_counter() - start

    start = time.perf_counter()
    hostile_tasks = [asyncio.create_task(timed(i, call)) for i, call in enumerate(hostile)]
    stream: list[asyncio.Task[None]] = []
    while True:
        elapsed = time.perf_counter() - start
        hostile_done = all(t.done() for t in hostile_tasks)
        if elapsed >= args.window_s or (hostile_done and elapsed >= args.min_s):
            break
        stream.append(asyncio.create_task(ordinary()))
        await asyncio.sleep(max(0.0, (len(stream) * args.every_ms / 1000) - (time.perf_counter() - start)))
    # The queries already sent are part of the measure: wait for them (bounded by the window).
    left = max(1.0, args.window_s - (time.perf_counter() - start))
    await asyncio.wait(stream, timeout=left)
    for task in stream:
        if not task.done():
            latencies.append(float("inf"))
    unanswered = sum(not t.done() for t in hostile_tasks)
    note = "; ".join(sorted(set(notes)))
    if unanswered:
        note += f"{'; ' if note else ''}{unanswered} not answered after {args.window_s:.0f} s"
    return latencies, hostile_s, note


PHASES = ("alone", "deep", "capped", "jpeg")


def build_dataset(path: str, rows: int) -> None:
    rng = np.random.default_rng(0)
    store = DeepLakeStore.create(path, model_name="tiny", dim=DIM)
    vectors = rng.standard_normal((rows, DIM), dtype=np.float32)
    for lo in range(0, rows, 10_000):
        store.append([Record(id=f"r{i}", embedding=vectors[i], text=f"row {i}")
                      for i in range(lo, min(rows, lo + 10_000))])
    store.close()


async def run_phase(args: argparse.Namespace, workdir: Path) -> None:
    """(child) One phase in a process of its own: hostile requests still running after their
    window cannot slow the next phase. Prints the phase as JSON and exits."""
    settings = Settings.model_validate(
        {
            "model": {"name": "tiny", "cache_dir": str(workdir / "cache")},
            "store": {"dataset": args.dataset},
            "search": {"page_memory_path": str(workdir / f"pages-{args.phase}.sqlite")},
        }
    )
    counter = [0]
    async with open_search_service(settings, progress=False) as service:
        first = await service.search(Query((Term("text", "warm up"),), limit=PAGE))
        for i in range(50):  # warm the worker, the store and the thread pool
            await service.search(Query((Term("text", f"warm up {i}"),), limit=PAGE))
        key = first.page_key
        hostile: list[Callable[[], Awaitable[object]]]
        if args.phase == "alone":
            name, hostile = "alone", []
        elif args.phase in ("deep", "capped"):
            offset = min(19_990, args.rows - PAGE) if args.phase == "deep" else 490
            name = f"{DEEP_PAGES} x Next page at offset {offset:,}"
            hostile = [lambda: service.page(key, offset) for _ in range(DEEP_PAGES)]
        else:
            bomb = hostile_jpeg(args)
            name = f"1 x image query, progressive JPEG scan bomb ({len(bomb) // 1024} KB)"
            hostile = [lambda: service.search(Query((Term("image", bomb),), limit=PAGE))]
        latencies, hostile_s, note = await stream_while(service, hostile, args, counter)
        print(json.dumps(Phase(name, latencies, hostile_s, note).__dict__), flush=True)  # inf: Infinity
        # Leave now: closing the service or the event loop would wait for hostile requests still
        # running in threads.
        os._exit(0)


def run_children(args: argparse.Namespace, workdir: Path) -> list[Phase]:
    path = str(workdir / "stall")
    build_dataset(path, args.rows)
    phases = []
    for phase in args.phases.split(","):
        command = [sys.executable, str(Path(__file__).resolve()), "--phase", phase, "--dataset", path,
                   "--workdir", str(workdir), *sys.argv[1:]]
        try:
            done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=args.window_s + 120)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode or not lines:
                raise RuntimeError(f"phase {phase} failed: {done.stderr[-2000:]}")
            phases.append(Phase(**json.loads(lines[-1])))
        except subprocess.TimeoutExpired:
            phases.append(Phase(phase, [float("inf")], [float("inf")], "the phase did not end"))
        print(f"  {phases[-1].name}: done", file=sys.stderr, flush=True)
    return phases


def report(phases: list[Phase]) -> None:
    alone = phases[0].p50()
    print("| while | queries | p50 ms | max ms | worst delay s | p50 ratio | hostile request s | hostile requests |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for phase in phases:
        worst = max(phase.latencies_ms)
        hostile = (", ".join("not answered" if s == float("inf") else f"{s:.2f}" for s in phase.hostile_s)
                   if phase.hostile_s else "")
        print(
            f"| {phase.name} | {len(phase.latencies_ms)} | {phase.p50():.1f} | {worst:.0f} |"
            f" {(worst - alone) / 1000:.2f} | {phase.p50() / alone:.1f} | {hostile} | {phase.hostile_note} |",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--scans", type=int, default=1000, help="the scan bomb's extra scans")
    parser.add_argument("--bomb", help="the hostile JPEG from this file (--write-bomb makes one)")
    parser.add_argument("--write-bomb", help="write the scan bomb to this file and exit")
    parser.add_argument("--every-ms", type=float, default=100.0, help="one ordinary query every N ms")
    parser.add_argument("--min-s", type=float, default=5.0, help="the shortest phase")
    parser.add_argument("--window-s", type=float, default=120.0, help="the longest phase")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"some of {','.join(PHASES)}")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)  # (child)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_bomb:
        Path(args.write_bomb).write_bytes(hostile_jpeg(args))
        return
    if args.phase:
        asyncio.run(run_phase(args, Path(args.workdir)))
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; {args.rows:,} rows of {DIM}-d vectors,"
          f" tiny model, a text query every {args.every_ms:.0f} ms\n", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        phases = run_children(args, Path(tmp))
    report(phases)


if __name__ == "__main__":
    main()
