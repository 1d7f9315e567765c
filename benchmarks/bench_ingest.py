"""Ingest throughput against the encoder alone: how close the pipeline comes to the model's speed.

For each model: N generated photos (JPEG, 640x480) in a folder; then, in one run, side by side:
- encoder only: the forward pass over already-prepared tensors, in batches (the ceiling);
- ingest: the whole pipeline (`ingest.pipeline.ingest`: listing, reading, decoding and
  preprocessing in worker processes, the forward pass, the DeepLake append and commit of every
  batch) into a fresh local dataset, once per worker count.
Same batch size, device and dtype (the encoder's `auto`: fp16 on CUDA, bf16 on CPUs with native
bf16, else fp32). The ratio ingest / encoder-only is the goal (>= 0.9 where the model dominates);
`tiny` shows the pipeline's own ceiling. Models have random weights (no download).

    python benchmarks/bench_ingest.py [--models tiny,imagebind_huge] [--images 300]
        [--huge-images 64] [--batch-size 16] [--workers 0,2] [--repeats 1] [--json results.json]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.host import cpu_name  # noqa: E402
from core.config import MediaLimits  # noqa: E402
from core.encoder import Encoder, resolve_dtype  # noqa: E402
from core.imagebind.model import build_imagebind  # noqa: E402
from core.store.deeplake_store import DeepLakeStore  # noqa: E402
from ingest.pipeline import ingest  # noqa: E402
from ingest.sources.folder import FolderSource  # noqa: E402


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

    def ratio(self, workers: int) -> float:
        return self.ratios[workers]


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
    assert summary.failed == 0 and summary.skipped == 0
    return summary.added / summary.seconds


def measure(model_name: str, count: int, args: argparse.Namespace, work: Path) -> Result:
    device = torch.device(args.device)
    dtype = resolve_dtype("auto", device, model_name)
    encoder = Encoder(build_imagebind(model_name), model_name, device, dtype, MediaLimits())
    root = work / f"images-{count}"
    if not root.exists():
        make_folder(root, count)
    name = str(dtype).removeprefix("torch.")
    ceilings: list[float] = []
    rates: dict[int, list[float]] = {w: [] for w in args.workers}
    for repeat in range(args.repeats):  # interleaved, so drift on a shared machine hits both
        ceilings.append(encoder_only(encoder, root, count, args.batch_size))
        print(f"  {model_name} encoder only: {ceilings[-1]:8.3g} img/s", flush=True)
        for workers in args.workers:
            rates[workers].append(ingest_rate(encoder, root, work / f"r{repeat}", args.batch_size, workers))
            print(f"  {model_name} ingest, {workers} workers: {rates[workers][-1]:8.3g} img/s"
                  f" ({rates[workers][-1] / ceilings[-1]:.2f}x encoder only)", flush=True)
    medians = {w: statistics.median(r) for w, r in rates.items()}
    ratios = {w: statistics.median(x / c for x, c in zip(r, ceilings, strict=True)) for w, r in rates.items()}
    return Result(
        model_name, str(device), name, args.batch_size, count, statistics.median(ceilings), medians, ratios
    )


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
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    logging.basicConfig(level=logging.ERROR)

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
    print(f"\nmedians of {args.repeats} round(s)\n" + header)
    for r in results:
        cells = "".join(f"  {r.ingest_ips[w]:16.3g}  {r.ratio(w):5.2f}" for w in args.workers)
        row = f"{r.model:16s} {r.dtype:9s} {r.batch_size:5d} {r.images:6d}  {r.encoder_only_ips:13.3g}"
        print(row + cells)
    if args.json:
        rows = [asdict(r) for r in results]
        report = {"machine": cpu_name(), "device": device_name, "results": rows}
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
