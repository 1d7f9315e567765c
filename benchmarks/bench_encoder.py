"""Encoder latency per modality, fp32 against bf16 (and fp16 on CUDA), batch 1 and 8.

Uses `imagebind_huge` with random weights: the real compute cost without the 4.5 GB download.
All numbers come from one run, side by side, so their ratios hold on a shared, noisy machine.

    python benchmarks/bench_encoder.py [--model imagebind_huge] [--batches 1,8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch
from PIL import Image

from core.config import MediaLimits
from core.encoder import Encoder, cpu_supports_bf16
from core.imagebind.model import build_imagebind


def sample_inputs(batch: int) -> dict[str, list]:
    rng = np.random.default_rng(0)
    texts = [f"a photo of object number {i} on a table at night" for i in range(batch)]
    images = [Image.fromarray(rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)) for _ in range(batch)]
    audios = [rng.normal(0, 0.1, 16000 * 5).astype(np.float32) for _ in range(batch)]
    return {"text": texts, "image": images, "audio": audios}


def time_forward(encoder: Encoder, modality: str, payloads: list, repeats: int) -> float:
    prepared = [encoder.prepare(modality, p) for p in payloads]
    encoder.forward(modality, prepared)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        encoder.forward(modality, prepared)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="imagebind_huge")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", help="e.g. float32,bfloat16 (default: float32 plus the fast "
                        "low precision of the device: fp16 on CUDA, bf16 on CPUs with native bf16)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    device = torch.device(args.device)
    dtypes = [torch.float32]
    if args.dtypes:
        dtypes = [getattr(torch, name) for name in args.dtypes.split(",")]
    elif device.type == "cuda":
        dtypes.append(torch.float16)
    elif cpu_supports_bf16():
        dtypes.append(torch.bfloat16)
    print(f"native bf16 on this CPU: {cpu_supports_bf16()}")

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    start = time.perf_counter()
    model = build_imagebind(args.model)
    print(f"built {args.model} with random weights in {time.perf_counter() - start:.1f} s")

    inputs = {b: sample_inputs(b) for b in batches}
    results: dict[tuple[str, int, str], float] = {}
    reference: dict[tuple[str, int], np.ndarray] = {}
    cosines: dict[tuple[str, str], float] = {}
    for dtype in dtypes:  # fp32 first: the model is cast down, never back up
        encoder = Encoder(model, args.model, device, dtype, MediaLimits())
        name = str(dtype).removeprefix("torch.")
        for modality in ("text", "image", "audio"):
            for batch in batches:
                results[modality, batch, name] = time_forward(encoder, modality, inputs[batch][modality], args.repeats)
                print(f"  {name:9s} {modality:5s} batch {batch:2d}: {results[modality, batch, name]:9.1f} ms", flush=True)
            vectors = encoder.embed(modality, inputs[batches[0]][modality])
            if dtype == torch.float32:
                reference[modality, batches[0]] = vectors
            else:
                ref = reference[modality, batches[0]]
                cos = np.sum(ref * vectors, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(vectors, axis=1))
                cosines[modality, name] = float(cos.min())
        model = encoder.model

    print("\nmodality batch " + " ".join(f"{str(d).removeprefix('torch.'):>10s}" for d in dtypes) + "   ratio fp32/low  per item (low)")
    for modality in ("text", "image", "audio"):
        for batch in batches:
            cells = [results[modality, batch, str(d).removeprefix("torch.")] for d in dtypes]
            ratio = f"{cells[0] / cells[-1]:10.2f}x" if len(cells) > 1 else ""
            print(f"{modality:8s} {batch:5d} " + " ".join(f"{c:10.1f}" for c in cells) + f"   {ratio}  {cells[-1] / batch:8.1f} ms")
    for (modality, name), cos in cosines.items():
        print(f"min cosine {name} vs float32, {modality}: {cos:.5f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"ms": {"/".join(map(str, k)): v for k, v in results.items()},
                       "cosine": {"/".join(k): v for k, v in cosines.items()}}, out, indent=1)


if __name__ == "__main__":
    main()
