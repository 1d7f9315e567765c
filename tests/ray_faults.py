"""Failures injected into an ingest on Ray, each exactly once (a marker file says it happened):
the worker process of a decode task, and an encoder actor, die mid-run with `os._exit`, as a
crash or an OOM kill would end them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.encoder import Encoder
from ingest.sources.base import ItemRef
from ingest.sources.folder import FolderSource


def first_time(marker: Path) -> bool:
    """True once per marker, whichever process asks first (O_EXCL: two at once cannot both win)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


@dataclass(frozen=True)
class CrashingSource(FolderSource):
    """A folder whose item `crash_on` kills the process reading it, the first time."""

    crash_on: str = ""
    marker: Path = Path("/nonexistent")

    def read(self, ref: ItemRef) -> bytes:
        if ref.id == self.crash_on and first_time(self.marker):
            os._exit(1)
        return super().read(ref)


class _CrashOnFirstBatch:
    def __init__(self, encoder: Encoder, marker: Path) -> None:
        self.encoder = encoder
        self.marker = marker

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def forward(self, modality, batch) -> np.ndarray:
        if first_time(self.marker):
            os._exit(1)
        return self.encoder.forward(modality, batch)


@dataclass(frozen=True)
class CrashingEncoderLoader:
    """Loads the encoder with `load`; the first batch any actor is given kills that actor."""

    load: Callable[[], Encoder]
    marker: Path

    def __call__(self) -> Encoder:
        return _CrashOnFirstBatch(self.load(), self.marker)  # type: ignore[return-value]
