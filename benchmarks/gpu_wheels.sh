#!/usr/bin/env bash
# Download, on a machine with a package index, the wheels that benchmarks/gpu_run.sh installs on
# a lent GPU machine that has none (Python 3.12, x86-64; its image already holds torch,
# torchaudio, numpy, pillow, regex, tqdm and requests). They land in ./.whl, which travels with
# the working tree (the device tool's `carry`, or as untracked files): keep it out of git with
#   echo /.whl/ >> .git/info/exclude
#
#   bash benchmarks/gpu_wheels.sh [--with-av] [--python 3.12]
#
# Versions follow this checkout's .venv when it has the package (what the tests ran with).
# PyAV is left out by default: its 36 MB would take the tree past the tool's 64 MiB; without it
# gpu_run.sh skips audio queries given as file bytes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYVER=3.12
PACKAGES=(deeplake deepframe pydantic pydantic_core annotated-types typing-inspection
          typing-extensions ftfy wcwidth)
while [ $# -gt 0 ]; do
    case "$1" in
        --with-av) PACKAGES+=(av) ;;
        --python) PYVER="$2"; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3
specs=()
for name in "${PACKAGES[@]}"; do
    version="$("$PY" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')"
    specs+=("$name${version:+==$version}")
done
mkdir -p "$ROOT/.whl"
"$PY" -m pip download --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$ROOT/.whl" "${specs[@]}"
du -sh "$ROOT/.whl"
