"""Startup of the search service with `imagebind_huge`: time to the first answer, and memory.

    python benchmarks/bench_startup.py                    # bf16 and fp32, 2 runs each, ~5-10 min
    python benchmarks/bench_startup.py --dtypes bfloat16 --runs 1 --json out.json

What it does, in a temporary directory (`--workdir`), deleted at the end:

1. Writes a random-weights `imagebind_huge` checkpoint with `torch.save` (a child process, so
   its 4.3 GB of weights leave this one): our three towers, plus a filler tensor under a depth
   key standing in for the towers we never load, so the file is about as large as Meta's
   (4.8 GB).
2. Writes a 1024-d DeepLake dataset of `--rows` random unit vectors, and one TOML config per
   dtype with `[model] checkpoint_path` pointing at the checkpoint (a path the user gives is
   loaded as is, never hashed against the registry digest of Meta's file).
3. Time to first answer: runs `python -m bot.cli search --model imagebind_huge --dataset ...
   --text ... --config ... --json` as a child process, from its start to the JSON answer on
   its stdout (and to its exit); its peak RSS from `os.wait4` (the child's own `ru_maxrss`).
   Runs alternate between the dtypes.
4. Memory over a session: a probe child (this script with `--probe`) opens the service as the
   bots do, answers a text, an image and an audio query, and reports VmRSS (split into
   anonymous and file-backed pages) and VmHWM (peak) after each step from /proc/self/status.
5. Verifying the cached checkpoint: the first `resolve_checkpoint` of the file as a cache entry
   (a full sha256) against later ones (the recorded verification is trusted while the file is
   unchanged).

The checkpoint is loaded with `torch.load(mmap=True)`: in fp32 the weights stay file-backed
pages that are read in (and counted in RSS) as each tower is first used; casting to bf16 reads
all of them once and keeps anonymous bf16 copies.
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
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.host import cpu_name, load_average, proc_status  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUERY_TEXT = "a red sports car parked on a wet street at night"
# Parameters of the official checkpoint's towers that we never load (depth, thermal, IMU, and
# the unused parts): 1,200.8M in the file against 1,073.1M in our three towers.
UNUSED_PARAMS = 127_700_000


def machine() -> str:
    mem = ""
    try:
        total_kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {total_kb / 1024**2:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{cpu_name()}, {os.cpu_count()} cores{mem}{load_average()}"


# --------------------------------------------------------------------------------------------
# Children


def write_checkpoint(path: Path) -> None:
    """(child) A random-weights imagebind_huge state dict, saved like the official file."""
    import torch

    from core.imagebind.model import build_imagebind

    start = time.perf_counter()
    state_dict = build_imagebind("imagebind_huge").state_dict()
    state_dict["modality_trunks.depth.unused_towers"] = torch.zeros(UNUSED_PARAMS)
    built = time.perf_counter()
    torch.save(state_dict, path)
    print(
        json.dumps({"build_s": built - start, "save_s": time.perf_counter() - built,
                    "bytes": path.stat().st_size})
    )


async def probe(config: Path, modalities: list[str]) -> None:
    """(child) Open the service as the bots do, query each modality, report memory."""
    started = time.perf_counter()
    from core.config import load_settings
    from core.query import Query, Term
    from core.startup import open_search_service

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_query import sample_jpeg, sample_ogg

    payloads = {"text": QUERY_TEXT, "image": sample_jpeg(), "audio": sample_ogg()}
    steps: list[dict[str, Any]] = [{"step": "imports", "s": time.perf_counter() - started, **proc_status()}]
    settings = load_settings(config)
    async with open_search_service(settings, progress=False) as service:
        steps.append({"step": "service open", "s": time.perf_counter() - started, **proc_status()})
        for modality in modalities:
            query = Query((Term(modality, payloads[modality]),), audio_as="sound")
            t0 = time.perf_counter()
            await service.search(query)
            steps.append({"step": f"{modality} answered", "s": time.perf_counter() - started,
                          "query_s": time.perf_counter() - t0, **proc_status()})
    print(json.dumps(steps))


# --------------------------------------------------------------------------------------------
# The parent


def run_child(cmd: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run `cmd`; seconds to its first stdout line and to its exit, its peak RSS, its output."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    assert child.stdout is not None and child.stderr is not None
    killer = threading.Timer(timeout, child.kill)
    killer.start()
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(child.stderr.read()))  # never blocks the child
    reader.start()
    try:
        first_line = child.stdout.readline()
        answered = time.perf_counter() - start
        rest = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (peak RSS)
        exited = time.perf_counter() - start
    finally:
        killer.cancel()
        reader.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({child.returncode}): {b''.join(errors).decode()[-2000:]}")
    return {
        "answer_s": answered,
        "exit_s": exited,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # Linux: KiB; MiB here
        "stdout": (first_line + rest).decode(),
    }


def make_dataset(path: Path, rows: int) -> None:
    import numpy as np

    from core.store.base import Record
    from core.store.deeplake_store import DeepLakeStore

    rng = np.random.default_rng(0)
    data = rng.standard_normal((rows, 1024), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    store = DeepLakeStore.create(str(path), model_name="imagebind_huge", dim=1024)
    store.append([Record(id=f"img{i:05d}", embedding=data[i], text=f"picture {i}", source="bench")
                  for i in range(rows)])
    store.close()


def write_config(path: Path, checkpoint: Path, cache: Path, dataset: Path, dtype: str) -> None:
    path.write_text(
        "[model]\n"
        'name = "imagebind_huge"\n'
        f"checkpoint_path = {json.dumps(str(checkpoint))}\n"
        f"cache_dir = {json.dumps(str(cache))}\n"
        f'dtype = "{dtype}"\n'
        "\n[store]\n"
        f"dataset = {json.dumps(str(dataset))}\n",
        encoding="utf-8",
    )


def time_verification(checkpoint: Path, repeats: int) -> dict[str, float]:
    """The checkpoint resolved as a cache entry: first (full sha256), then later starts."""
    from core.imagebind.pretrained import CheckpointSpec, resolve_checkpoint

    # No registry size or digest for this random file: the first resolve hashes it and records
    # the digest in the sidecar, as after a download; later ones check against the sidecar.
    spec = CheckpointSpec(name="imagebind_huge (random weights)", url="http://127.0.0.1:9/unused",
                          filename=checkpoint.name)
    start = time.perf_counter()
    resolve_checkpoint(spec, cache_dir=checkpoint.parent, progress=False)
    first = time.perf_counter() - start
    later = []
    for _ in range(repeats):
        start = time.perf_counter()
        resolve_checkpoint(spec, cache_dir=checkpoint.parent, progress=False)
        later.append(time.perf_counter() - start)
    verified = checkpoint.with_name(checkpoint.name + ".verified")
    return {"first_resolve_s": first, "later_resolve_ms": statistics.median(later) * 1000,
            "recorded": verified.is_file()}


def torch_build(python: str, env: dict[str, str]) -> str:
    """The torch version an interpreter imports (`2.14.1+cu130`, `2.13.0+cpu`)."""
    out = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], env=env,
                         capture_output=True, text=True, check=True, timeout=300)
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--pythons", default=sys.executable,
                        help="comma-separated interpreters to compare (e.g. a venv with the CUDA build "
                             "of torch and one with the CPU-only build), each with this project installed")
    parser.add_argument("--runs", type=int, default=2, help="CLI runs per dtype (alternated)")
    parser.add_argument("--rows", type=int, default=6000)
    parser.add_argument("--probe-modalities", default="text,image,audio",
                        help="queries of the memory probe (empty skips the probe)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per child process")
    parser.add_argument("--workdir", type=Path, default=None, help="where the 4.8 GB checkpoint goes")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--write-checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_checkpoint:
        write_checkpoint(args.write_checkpoint)
        return
    if args.probe:
        asyncio.run(probe(args.probe, [m for m in args.probe_modalities.split(",") if m]))
        return

    dtypes = args.dtypes.split(",")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    pythons = {torch_build(python, env): python for python in args.pythons.split(",")}
    # One variant per (dtype, torch build), named "bfloat16, torch 2.13.0+cpu"
    variants = {f"{dtype}, torch {build}": (dtype, python) for dtype in dtypes for build, python in pythons.items()}
    results: dict[str, Any] = {"machine": machine(), "rows": args.rows, "cli": {}, "probe": {}}
    print(f"machine: {results['machine']}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-startup-") as tmp_name:
        tmp = Path(tmp_name)
        checkpoint = tmp / "cache" / "imagebind_huge_random.pth"
        checkpoint.parent.mkdir()
        written = run_child([sys.executable, __file__, "--write-checkpoint", str(checkpoint)], env, args.timeout)
        info = json.loads(written["stdout"])
        results["checkpoint"] = info
        print(f"checkpoint: {info['bytes'] / 1e9:.2f} GB, random init {info['build_s']:.0f} s, "
              f"torch.save {info['save_s']:.0f} s", flush=True)
        dataset = tmp / "dataset"
        make_dataset(dataset, args.rows)
        configs = {}
        for dtype in dtypes:
            configs[dtype] = tmp / f"{dtype}.toml"
            write_config(configs[dtype], checkpoint, tmp / "cache", dataset, dtype)

        print(f"\ntime to first answer (`python -m bot.cli search ... --json`), {args.runs} runs per variant:", flush=True)
        names = list(variants)
        for run in range(args.runs):
            for name in names if run % 2 == 0 else names[::-1]:
                dtype, python = variants[name]
                cmd = [python, "-m", "bot.cli", "search", "--model", "imagebind_huge",
                       "--dataset", str(dataset), "--text", QUERY_TEXT, "--config", str(configs[dtype]), "--json"]
                out = run_child(cmd, env, args.timeout)
                answer = json.loads(out["stdout"])
                out["hits"] = len(answer["hits"])
                out["timings_ms"] = answer.get("timings_ms", {})
                del out["stdout"]
                results["cli"].setdefault(name, []).append(out)
                print(f"  {name:32s} answer {out['answer_s']:5.1f} s, exit {out['exit_s']:5.1f} s, "
                      f"peak RSS {out['peak_rss_mb'] / 1024:.2f} GiB, query {out['timings_ms'].get('total', 0):.0f} ms",
                      flush=True)

        if args.probe_modalities:
            print("\nmemory over a session (probe child; MiB):", flush=True)
            for name, (dtype, python) in variants.items():
                out = run_child([python, __file__, "--probe", str(configs[dtype]),
                                 "--probe-modalities", args.probe_modalities], env, args.timeout)
                steps = json.loads(out["stdout"])
                results["probe"][name] = steps
                for step in steps:
                    print(f"  {name:32s} {step['step']:15s} at {step['s']:6.1f} s: RSS {step['VmRSS']:7.0f} "
                          f"(anon {step['RssAnon']:7.0f}, file {step['RssFile']:7.0f}), peak {step['VmHWM']:7.0f}",
                          flush=True)

        print("\nverifying the checkpoint as a cache entry:", flush=True)
        results["verify"] = time_verification(checkpoint, repeats=3)
        print(f"  first resolve (full sha256) {results['verify']['first_resolve_s']:.1f} s, later "
              f"{results['verify']['later_resolve_ms']:.1f} ms", flush=True)

    print_summary(results)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def print_summary(results: dict[str, Any]) -> None:
    print("\n| variant | first answer s (median) | exit s | CLI peak RSS GiB | probe RSS after open / text / all, GiB "
          "| probe peak GiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in results["cli"].items():
        steps = {s["step"]: s for s in results["probe"].get(name, [])}
        probe_rss = " / ".join(
            f"{steps[k]['VmRSS'] / 1024:.2f}" for k in ("service open", "text answered") if k in steps
        )
        last = results["probe"].get(name, [{}])[-1]
        if "VmRSS" in last and last.get("step") != "text answered":
            probe_rss += f" / {last['VmRSS'] / 1024:.2f}"
        peak = f"{last['VmHWM'] / 1024:.2f}" if "VmHWM" in last else "-"
        print(
            f"| {name} | {statistics.median(r['answer_s'] for r in runs):.1f} "
            f"| {statistics.median(r['exit_s'] for r in runs):.1f} "
            f"| {max(r['peak_rss_mb'] for r in runs) / 1024:.2f} | {probe_rss or '-'} | {peak} |"
        )


if __name__ == "__main__":
    main()
