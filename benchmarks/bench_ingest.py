"""Ingest throughput against the encoder alone: how close the pipeline comes to the model's speed.

For each model: N generated photos (JPEG, 640x480) in a folder; then, in one run, side by side:
- encoder only: the forward pass over already-prepared tensors, in batches (the ceiling);
- ingest: the whole pipeline (`ingest.pipeline.ingest`: listing, reading, decoding and
  preprocessing in worker processes, the forward pass, the DeepLake append and commit of every
  batch) into a fresh local dataset, once per worker count.
- with `--ray`: the ingest on Ray (`ingest.ray_ingest`: decode tasks, one encoder actor that
  holds the model, this process writing) into a fresh dataset, on a Ray started here (loopback,
  every core) or the cluster at `--ray-address`. Its one-off start-up (Ray Data's start, the
  actor's process and its model, built from random weights) is timed apart: "after start-up"
  runs from the moment the actor's model is ready to the last commit, and is compared with the
  best single-process ingest (whose model was built beforehand too) and with the encoder alone.
  Decoding starts while the actor loads, so "after start-up" begins with some images decoded.
Same batch size, device and dtype (the encoder's `auto`: fp16 on CUDA, bf16 on CPUs with native
bf16, else fp32). The ratio ingest / encoder-only is the goal (>= 0.9 where the model dominates);
`tiny` shows the pipeline's own ceiling. Models have random weights (no download).

    python benchmarks/bench_ingest.py [--models tiny,imagebind_huge] [--images 300]
        [--huge-images 64] [--batch-size 16] [--workers 0,2] [--repeats 1] [--json results.json]
        [--ray [--ray-address HOST:PORT]]
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.host import cpu_name
from core.config import MediaLimits, ModelSettings
from core.encoder import Encoder, resolve_dtype
from core.imagebind.configs import get_config
from core.imagebind.model import build_imagebind
from core.store.deeplake_store import DeepLakeStore
from ingest.pipeline import IngestSummary, ingest
from ingest.sources.folder import FolderSource


@dataclass
class Result:
    model: str
    device: str
    dtype: str
    batch_size: int
    images: int
    encoder_only_ips: float  # images per second, median over rounds
    ingest_ips: dict[int, float] = field(default_factory=dict)  # by worker count, median
    ratios: dict[int, float] = field(default_factory=dict)  # median of each round's ratio
    ray: RayRate | None = None  # --ray, medians

    def ratio(self, workers: int) -> float:
        return self.ratios[workers]


@dataclass(frozen=True)
class RayRate:
    whole_ips: float  # images / the whole call, start-up included
    startup_s: float  # from the call to the actor's model being ready
    after_startup_ips: float  # images / (last commit - model ready)
    vs_single: float  # after start-up / the best single-process ingest of the round
    vs_encoder: float  # after start-up / the encoder alone
    restarts: int = 0  # times the actor was started again (killed, e.g. by Ray's memory monitor)


@dataclass(frozen=True)
class RandomEncoder:
    """Builds the benchmark's encoder (random weights) inside a Ray actor, with the driver's
    torch threads (Ray starts an actor with one), and notes when it is ready in `ready_file`."""

    model_name: str
    device: str
    dtype: str
    threads: int
    ready_file: str  # one line per start: the time the model was ready

    def __call__(self) -> Encoder:
        torch.set_num_threads(self.threads)
        model = build_imagebind(self.model_name)
        encoder = Encoder(model, self.model_name, torch.device(self.device), getattr(torch, self.dtype), MediaLimits())
        with open(self.ready_file, "a") as file:
            file.write(f"{time.time()!r}\n")
        return encoder


def synthetic_photo(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    """A photo-like JPEG: a colour gradient, shapes and mild noise (so it compresses like one)."""
    rng = np.random.default_rng(seed)
    width, height = size
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pixels = a * (1 - x) * (1 - y) + b * x * y + rng.normal(0, 8, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 60)), int(rng.integers(0, height - 60))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([x0, y0, x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200))], fill=fill)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_folder(root: Path, count: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (root / f"photo{i:05d}.jpg").write_bytes(synthetic_photo(i))


def encoder_only(encoder: Encoder, root: Path, count: int, batch_size: int) -> float:
    """Images per second of the forward pass alone, on tensors prepared beforehand."""
    prepared = [encoder.prepare("image", p.read_bytes()) for p in sorted(root.glob("*.jpg"))[:count]]
    encoder.forward("image", prepared[:batch_size])  # warm-up
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for lo in range(0, len(prepared), batch_size):
        encoder.forward("image", prepared[lo : lo + batch_size])  # returns numpy: synchronised
    return len(prepared) / (time.perf_counter() - start)


def ingest_rate(encoder: Encoder, root: Path, work: Path, batch_size: int, workers: int) -> float:
    dataset = work / f"ds-{encoder.model_name}-w{workers}"
    store = DeepLakeStore.open_or_create(str(dataset), model_name=encoder.model_name, dim=encoder.dim)
    with store:
        source = FolderSource(root)
        summary = ingest(
            source, store=store, encoder=encoder, batch_size=batch_size, workers=workers, progress=False
        )
    return _checked(summary)


def ray_rate(
    model_name: str, device: torch.device, dtype: torch.dtype, root: Path, work: Path, batch_size: int, address: str
) -> tuple[float, float, float, int]:
    """The ingest on Ray, one encoder actor: whole-run images/s, start-up seconds (until the
    actor's model is ready), images/s after start-up, and how often the actor was restarted."""
    from ingest.ray_ingest import RayOptions, ray_ingest

    dataset = work / f"ds-{model_name}-ray"
    ready = work / f"ready-{model_name}"
    ready.unlink(missing_ok=True)
    dtype_name = str(dtype).removeprefix("torch.")
    load = RandomEncoder(model_name, str(device), dtype_name, torch.get_num_threads(), str(ready))
    options = RayOptions(address=address, actors=1, encoder=load, gpus=device.type == "cuda")
    store = DeepLakeStore.open_or_create(str(dataset), model_name=model_name, dim=get_config(model_name).out_dim)
    with store:
        start = time.time()
        summary = ray_ingest(
            FolderSource(root), store=store, model=ModelSettings(name=model_name), limits=MediaLimits(),
            batch_size=batch_size, progress=False, options=options,
        )
        end = time.time()
    starts = [float(line) for line in ready.read_text().split()]
    return _checked(summary), starts[0] - start, summary.added / (end - starts[-1]), len(starts) - 1


def _checked(summary: IngestSummary) -> float:
    assert summary.failed == 0 and summary.skipped == 0
    return summary.added / summary.seconds


def measure(model_name: str, count: int, args: argparse.Namespace, work: Path) -> Result:
    device = torch.device(args.device)
    dtype = resolve_dtype("auto", device, model_name)
    encoder: Encoder | None = None
    root = work / f"images-{count}"
    if not root.exists():
        make_folder(root, count)
    name = str(dtype).removeprefix("torch.")
    ceilings: list[float] = []
    rates: dict[int, list[float]] = {w: [] for w in args.workers}
    on_ray: list[RayRate] = []
    for repeat in range(args.repeats):  # interleaved, so drift on a shared machine hits both
        if encoder is None:
            encoder = Encoder(build_imagebind(model_name), model_name, device, dtype, MediaLimits())
        ceilings.append(encoder_only(encoder, root, count, args.batch_size))
        print(f"  {model_name} encoder only: {ceilings[-1]:8.3g} img/s", flush=True)
        for workers in args.workers:
            rates[workers].append(ingest_rate(encoder, root, work / f"r{repeat}", args.batch_size, workers))
            print(f"  {model_name} ingest, {workers} workers: {rates[workers][-1]:8.3g} img/s"
                  f" ({rates[workers][-1] / ceilings[-1]:.2f}x encoder only)", flush=True)
        if args.ray:
            encoder = None  # the actor holds its own copy: not two models in this machine's memory
            gc.collect()
            whole, startup, after, restarts = ray_rate(
                model_name, device, dtype, root, work / f"r{repeat}", args.batch_size, args.ray_address
            )
            single = max(r[-1] for r in rates.values())
            on_ray.append(RayRate(whole, startup, after, after / single, after / ceilings[-1], restarts))
            print(f"  {model_name} ingest on Ray: {whole:8.3g} img/s, start-up {startup:.1f} s, then {after:8.3g}"
                  f" img/s ({after / single:.2f}x single-process, {after / ceilings[-1]:.2f}x encoder only)"
                  + (f"; the actor was restarted {restarts} time(s): not comparable" if restarts else ""),
                  flush=True)
    medians = {w: statistics.median(r) for w, r in rates.items()}
    ratios = {w: statistics.median(x / c for x, c in zip(r, ceilings, strict=True)) for w, r in rates.items()}
    result = Result(
        model_name, str(device), name, args.batch_size, count, statistics.median(ceilings), medians, ratios
    )
    if on_ray:
        result.ray = RayRate(*(statistics.median(getattr(x, f.name) for x in on_ray) for f in fields(RayRate)))
    return result


def start_ray(address: str | None) -> str:
    """Join the cluster at `address`, or start a Ray here: every core, loopback only."""
    import ray

    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1")
    return ray.get_runtime_context().gcs_address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,imagebind_huge")
    parser.add_argument("--images", type=int, default=300, help="images for the small models")
    parser.add_argument("--huge-images", type=int, default=64,
                        help="images for imagebind_huge (fp32 on a small CPU: seconds per image)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of all measurements; medians")
    parser.add_argument("--workers", default="0,2", help="worker counts to measure, e.g. 0,2,8")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--ray", action="store_true", help="also the ingest on Ray (the [ray] extra)")
    parser.add_argument("--ray-address", help="with --ray: a running cluster (default: a Ray started here)")
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    logging.basicConfig(level=logging.ERROR)
    if args.ray:
        args.ray_address = start_ray(args.ray_address)

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "no GPU"
    threads = torch.get_num_threads()
    print(f"machine: {cpu_name()}, {threads} torch threads, device {args.device} ({device_name})")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        for model_name in args.models.split(","):
            count = args.huge_images if model_name == "imagebind_huge" else args.images
            results.append(measure(model_name, count, args, Path(tmp)))

    header = "model            dtype     batch images  encoder img/s" + "".join(
        f"  ingest w={w} img/s  ratio" for w in args.workers
    )
    if args.ray:
        header += "  Ray img/s  start-up s  after start-up img/s  vs single  vs encoder"
    print(f"\nmedians of {args.repeats} round(s)\n" + header)
    for r in results:
        cells = "".join(f"  {r.ingest_ips[w]:16.3g}  {r.ratio(w):5.2f}" for w in args.workers)
        row = f"{r.model:16s} {r.dtype:9s} {r.batch_size:5d} {r.images:6d}  {r.encoder_only_ips:13.3g}"
        if r.ray is not None:
            q = r.ray
            cells += (f"  {q.whole_ips:9.3g}  {q.startup_s:10.1f}  {q.after_startup_ips:20.3g}"
                      f"  {q.vs_single:9.2f}  {q.vs_encoder:10.2f}")
        print(row + cells)
    if args.ray:
        import ray

        ray.shutdown()
    if args.json:
        rows = [asdict(r) for r in results]
        report = {"machine": cpu_name(), "device": device_name, "results": rows}
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
