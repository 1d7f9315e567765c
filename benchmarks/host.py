"""What machine a benchmark ran on, for the lines they print first; this process's memory."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def load_average() -> str:
    """", load average 1.0 0.8 0.5" (the machine is shared: say how busy it was), or ""."""
    return ", load average %.1f %.1f %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else ""


def proc_status() -> dict[str, float]:
    """VmRSS, RssAnon, RssFile and VmHWM (peak) of this process, in MiB (Linux)."""
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out
