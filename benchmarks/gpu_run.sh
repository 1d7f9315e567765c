#!/usr/bin/env bash
# The GPU benchmarks in one go, for a lent CUDA machine (about 5 minutes; each step is capped).
#
#   bash benchmarks/gpu_run.sh            # from the repository root
#   STEPS="encoder query" bash benchmarks/gpu_run.sh     # some steps only ("" installs only)
#   MODEL=tiny DEVICE=cpu INSTALL=0 PYTHON=.venv/bin/python bash benchmarks/gpu_run.sh
#                                      # a rehearsal of every benchmark step on a CPU, no install
#
# Writes under $OUT (set by the device tool) or ./gpu-results:
#   env.txt        GPU, driver, Python, torch, what was installed and how
#   encoder.json   bench_encoder.py: fp32 and fp16, batch 1 / 8 / 64, text, image, audio
#   query.json     bench_query.py in fp16: the query path against the model's own cost, and
#                  8 concurrent queries against 8 one by one (batch windows 0, 2, 5 ms)
#   ingest.json    bench_ingest.py in fp16 (when that script is in the tree)
#   ingest_ray.json  bench_ingest.py --ray in fp16, batch 64: the ingest on Ray (one encoder actor
#                  on the GPU) against the single-process ingest and the encoder alone, on
#                  RAY_IMAGES images (1024); skipped, and said so, where Ray Data is not installed
#   log.txt        everything printed
#
# Installing: a venv that sees the machine's own torch (--system-site-packages; the pinned
# torch of pyproject.toml is not fetched), the project installed with `pip install -e .
# --no-deps`, then the dependencies the machine lacks. A machine without a package index
# (the lent ones have none) installs them from wheels in ./.whl, made beforehand on a machine
# with one by `bash benchmarks/gpu_wheels.sh` (carry `.whl` along). Without PyAV the audio
# inputs that are file bytes are skipped (bench_encoder feeds waveforms and still runs audio).
# Ray (the `ray` step) is installed from the index when there is one; its wheels with pyarrow and
# pandas are far over the device tool's 64 MiB, so on a lent machine without an index the step
# runs only where the machine already has Ray.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu-results}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: >"$LOG"
export PYTHONUNBUFFERED=1
START=$SECONDS

say() { echo "[$((SECONDS - START)) s] $*" | tee -a "$LOG"; }
# step SECONDS NAME COMMAND...: run COMMAND under `timeout`, log it, never stop the script.
step() {
    local limit=$1 name=$2
    shift 2
    say "== $name (at most ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        say "!! $name stopped at its ${limit} s limit"
    elif [ "$rc" -ne 0 ]; then
        say "!! $name failed (exit $rc)"
    fi
    return 0
}

PY="${PYTHON:-python3}"
VENV="${VENV:-/tmp/search-all-gpu-venv}"
STEPS="${STEPS-encoder query ingest ray}"
RAY_IMAGES="${RAY_IMAGES:-1024}"
MODEL="${MODEL:-imagebind_huge}"
DEVICE="${DEVICE:-cuda}"
wanted() { [[ " $STEPS " == *" $1 "* ]]; }

# --- install ------------------------------------------------------------------------------
{
    echo "date: $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "nvidia-smi: none"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
    echo "python: $($PY --version 2>&1)"
} >"$OUT/env.txt"

PYBIN="$VENV/bin/python"
if [ "${INSTALL:-1}" = 0 ]; then  # PYTHON already has everything (a rehearsal on a dev machine)
    PYBIN="$PY"
else
    say "== install into $VENV"
    timeout 60 "$PY" -m venv --system-site-packages "$VENV" 2>&1 | tee -a "$LOG"
    PIP=(timeout 120 "$VENV/bin/python" -m pip install -q --disable-pip-version-check)
    if ! "${PIP[@]}" --no-deps --no-build-isolation -e "$ROOT" 2>&1 | tee -a "$LOG"; then
        say "pip install -e . failed: importing from the tree instead (PYTHONPATH)"
    fi
    # What pyproject.toml needs beyond torch, torchaudio, pillow and numpy, which the machine has.
    if [ -d "$ROOT/.whl" ]; then
        "${PIP[@]}" --no-index --no-deps "$ROOT"/.whl/*.whl 2>&1 | tee -a "$LOG"
    else
        "${PIP[@]}" --retries 0 --timeout 10 deeplake av pydantic ftfy regex tqdm 2>&1 | tee -a "$LOG" \
            || say "no package index here: make ./.whl with benchmarks/gpu_wheels.sh and carry it"
    fi
    if wanted ray && ! "$VENV/bin/python" -c "import ray.data" 2>/dev/null && [ ! -d "$ROOT/.whl" ]; then
        "${PIP[@]}" --retries 0 --timeout 10 "ray[data]>=2.60,<2.64" 2>&1 | tee -a "$LOG" \
            || say "Ray Data could not be installed: the ray step will be skipped"
    fi
fi
[ -x "$PYBIN" ] || PYBIN="$PY"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# PyAV (35 MB) may be left out to keep the carried wheels under the size limit: a stand-in lets
# `core.media.audio` import; decoding audio bytes then fails, so bench_query skips audio.
MODALITIES=text,image,audio
if ! "$PYBIN" -c "import av" 2>/dev/null; then
    STUB="$(mktemp -d)"
    mkdir -p "$STUB/av"
    printf '%s\n' 'def __getattr__(name):' \
        '    raise ImportError("PyAV is not installed on this machine")' >"$STUB/av/__init__.py"
    export PYTHONPATH="$PYTHONPATH:$STUB"
    MODALITIES=text,image
    say "PyAV missing: a stand-in is used; bench_query runs text and image only"
fi
"$PYBIN" - >>"$OUT/env.txt" 2>&1 <<'EOF'
import importlib
for name in ("torch", "torchaudio", "deeplake", "pydantic", "av", "PIL", "numpy", "ray"):
    try:
        module = importlib.import_module(name)
        print(f"{name}: {getattr(module, '__version__', '?')} ({getattr(module, '__file__', '')})")
    except Exception as exc:
        print(f"{name}: MISSING ({exc})")
import torch
print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF
cat "$OUT/env.txt" | tee -a "$LOG"

# --- benchmarks ---------------------------------------------------------------------------
wanted encoder && step 110 bench_encoder "$PYBIN" benchmarks/bench_encoder.py --model "$MODEL" \
    --device "$DEVICE" --batches 1,8,64 --dtypes float32,float16 --repeats 3 --json "$OUT/encoder.json"

wanted query && step 70 bench_query "$PYBIN" benchmarks/bench_query.py --model "$MODEL" --device "$DEVICE" \
    --dtype float16 --repeats 9 --modalities "$MODALITIES" --windows 0,2,5 --rounds 3 --no-slack --image-side 0 \
    --json "$OUT/query.json"

if wanted ingest && [ -f benchmarks/bench_ingest.py ]; then
    step 70 bench_ingest "$PYBIN" benchmarks/bench_ingest.py --models "$MODEL" \
        --images 256 --huge-images 256 --batch-size 64 --workers 0,8 --device "$DEVICE" --json "$OUT/ingest.json"
fi

# The ingest on Ray: Ray started here (every core, loopback), one encoder actor with the GPU
# (fp16), batch 64; its start-up (Ray Data, the actor, the model) is timed apart from its rate.
if wanted ray; then
    if "$PYBIN" -c "import ray.data" 2>/dev/null; then
        step 300 bench_ingest_ray "$PYBIN" benchmarks/bench_ingest.py --models "$MODEL" \
            --images "$RAY_IMAGES" --huge-images "$RAY_IMAGES" --batch-size 64 --workers 8 --device "$DEVICE" \
            --ray --json "$OUT/ingest_ray.json"
    else
        say "!! ray skipped: Ray Data is not installed here (pip install 'search-all[ray]')"
    fi
fi

say "done in $((SECONDS - START)) s; results in $OUT"
ls -l "$OUT" | tee -a "$LOG"
