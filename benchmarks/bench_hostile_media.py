"""Time and peak extra memory of decoding hostile media (issue 17, items 1, 2 and 9).

    python benchmarks/bench_hostile_media.py                 # every case, the code as it is
    python benchmarks/bench_hostile_media.py --cases flac-1hz-4096,png16-limit
    python benchmarks/bench_hostile_media.py --core-from /tmp/old   # another copy of core/

Each case is made here (the makers of tests/bad_inputs.py), written to a file and decoded by
`decode_audio` / `decode_image` in a fresh child process, which reports the wall time of the
decode and its peak extra resident memory: `ru_maxrss` after the decode minus before it (the
interpreter, numpy, Pillow and PyAV already loaded and the file already read). FFmpeg's and
Pillow's own allocations count, which `tracemalloc` would not see. `--core-from DIR` puts DIR
first on the child's path, so `DIR/core` is decoded with (e.g. `git archive HEAD core | tar -x
-C DIR` for the code before a change); cases that would take minutes or tens of GB there are
left out with `--skip-costly`.

Goal (issue 17): at most 1.5 GB extra and 5 s per hostile input.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# A child decodes with the core/ of `--core-from` when given (passed on in this variable).
CORE_FROM_ENV = "BENCH_HOSTILE_CORE_FROM"
sys.path[:0] = [path for path in (os.environ.get(CORE_FROM_ENV), str(ROOT)) if path]

from tests import bad_inputs as bad  # noqa: E402

LIMIT_SIDE = 6324  # 6324 x 6324 = 39.99 MP, just under the default 40 MP limit


def float_tiff(side: int) -> bytes:
    """A float greyscale TIFF (mode F), one value, deflate-compressed."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), 0.5, np.float32)).save(buffer, "TIFF", compression="tiff_deflate")
    return buffer.getvalue()


# name -> (kind, maker, costly before the fix)
CASES: dict[str, tuple[str, Callable[[], bytes], bool]] = {
    "flac-1hz-4096": ("audio", lambda: bad.flac_frames_at(1, frames=64, block=4096), False),
    "flac-1hz-65535": ("audio", lambda: bad.flac_frames_at(1, frames=64, block=65535), True),
    "flac-4khz-65535": ("audio", lambda: bad.flac_frames_at(4000, frames=64, block=65535), False),
    "jpeg-6000-400-scans": ("image", lambda: bad.jpeg_scan_bomb(6000, 400), False),
    "jpeg-6000-10000-scans": ("image", lambda: bad.jpeg_scan_bomb(6000, 10_000), True),
    "jpeg-6000-16-scans": ("image", lambda: bad.jpeg_scan_bomb(6000, 10), False),
    "png16-limit": ("image", lambda: bad.grey16_png(LIMIT_SIDE, LIMIT_SIDE), False),
    "tiff-float-limit": ("image", lambda: float_tiff(LIMIT_SIDE), False),
}


def child(kind: str, path: str) -> None:
    """Decode the file at `path` once; print the seconds, the peak extra RSS and the outcome."""
    import core
    from core.config import MediaLimits
    from core.errors import BadInputError
    from core.media.audio import decode_audio
    from core.media.image import decode_image

    data = Path(path).read_bytes()
    limits = MediaLimits()
    decode = decode_audio if kind == "audio" else decode_image
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        decode(data, limits)
        outcome = "decoded"
    except BadInputError as exc:
        outcome = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    extra_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    result = {"seconds": seconds, "extra_mib": extra_kib / 1024, "outcome": outcome, "core": core.__file__}
    print(json.dumps(result))


def measure(kind: str, data: bytes, core_from: str | None, timeout: float) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".bin") as file:
        file.write(data)
        file.flush()
        env = {key: value for key, value in os.environ.items() if key != CORE_FROM_ENV}
        if core_from:
            env[CORE_FROM_ENV] = core_from
        try:
            done = subprocess.run(
                [sys.executable, __file__, "--child", kind, file.name],
                capture_output=True, text=True, env=env, timeout=timeout, check=True,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"seconds": timeout, "extra_mib": float("nan"), "outcome": f"killed after {timeout:.0f} s"}
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    parser.add_argument("--core-from", help="a folder holding another copy of core/")
    parser.add_argument("--skip-costly", action="store_true", help="leave out the cases marked costly")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a child is killed")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    print(f"{'case':24} {'bytes':>9} {'seconds':>8} {'extra MiB':>10}  outcome")
    for name in args.cases.split(","):
        kind, make, costly = CASES[name]
        if costly and args.skip_costly:
            continue
        data = make()
        result = measure(kind, data, args.core_from, args.timeout)
        outcome = result["outcome"]
        print(f"{name:24} {len(data):>9,} {result['seconds']:>8.2f} {result['extra_mib']:>10,.0f}  {outcome[:90]}")


if __name__ == "__main__":
    main()
