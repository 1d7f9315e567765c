"""Read, decode and preprocess images in worker processes, batch by batch (a torch DataLoader).

`prepared_batches(source, refs, ...)` yields `PreparedBatch`es: the model's input tensor for the
images that decoded, the JPEG bytes to keep (or upload) and the sizes, and the items that failed
with the reason. Each worker takes every n-th item (`refs[worker::workers]`) and reads it
through the source itself, so image bytes never cross a process boundary on the way in; the
collate stacks the good tensors and keeps the failures, so one broken file fails only itself.
With `workers=0` the same code runs in the calling process.

The preprocessing is the encoder's (`decode_image`, then `image_to_tensor`), so an embedding
does not depend on the number of workers.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from PIL import Image
from torch.utils.data import (
    DataLoader,
    IterableDataset,
    default_collate,
    get_worker_info,
)

from core.config import MediaLimits
from core.errors import BadInputError
from core.imagebind.transforms import IMAGE_SIZE, image_to_tensor
from core.media.image import decode_image, encode_jpeg, jpeg_without_metadata
from ingest.sources.base import ItemRef, Source

log = logging.getLogger(__name__)

STORED_MAX_SIDE = 1024
JPEG_MAGIC = b"\xff\xd8\xff"


def stored_jpeg(data: bytes, image: Image.Image) -> bytes:
    """The bytes kept (or uploaded), without metadata (EXIF with its GPS position, XMP, ...):
    the original JPEG with its metadata segments taken out when small enough and not turned by
    its EXIF orientation, else a JPEG of the decoded `image` (turned already), resized to fit."""
    if data[:3] == JPEG_MAGIC and max(image.size) <= STORED_MAX_SIDE:
        stripped = jpeg_without_metadata(data)
        if stripped is not None:
            return stripped
    copy = image.copy()
    copy.thumbnail((STORED_MAX_SIDE, STORED_MAX_SIDE), Image.Resampling.LANCZOS)
    return encode_jpeg(copy)


def content_hash(source: Source, ref: ItemRef, data: bytes | None = None) -> str:
    """What `ref`'s content is, to tell later whether it changed: the version its listing gave
    (an S3 ETag), else the SHA-256 of its bytes (`data`, or read from `source`)."""
    if ref.version:
        return f"etag:{ref.version}"
    if data is None:
        data = source.read(ref)
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass(frozen=True)
class PreparedItem:
    """One item after its worker is done with it: a tensor and its JPEG, or a failure."""

    ref: ItemRef
    pixels: torch.Tensor | None = None  # float32 [3, 224, 224]
    jpeg: bytes = b""
    width: int = 0
    height: int = 0
    error: str = ""
    hash: str = ""  # `content_hash` of the bytes read


@dataclass(frozen=True)
class PreparedBatch:
    """The good items of a batch (`refs[i]` is `pixels[i]`) and the failed ones."""

    refs: list[ItemRef]
    pixels: torch.Tensor  # float32 [len(refs), 3, 224, 224]
    jpegs: list[bytes]
    sizes: list[tuple[int, int]]
    failures: list[tuple[ItemRef, str]]
    hashes: list[str] = field(default_factory=list)  # `content_hash` of each good item

    def __len__(self) -> int:
        return len(self.refs) + len(self.failures)


def prepare_item(source: Source, ref: ItemRef, limits: MediaLimits) -> PreparedItem:
    """Read, decode and preprocess one item; bad data becomes a failure, not an exception."""
    try:
        data = source.read(ref)
        image = decode_image(data, limits)
        return PreparedItem(
            ref, image_to_tensor(image), stored_jpeg(data, image), image.width, image.height,
            hash=content_hash(source, ref, data),
        )
    except (BadInputError, OSError) as exc:
        return PreparedItem(ref, error=str(exc) or type(exc).__name__)


def collate(items: Sequence[PreparedItem]) -> PreparedBatch:
    """Stack the good items' tensors (in a worker: straight into shared memory, as torch's
    `default_collate` does, so the batch reaches the main process without another copy)."""
    good = [item for item in items if item.pixels is not None]
    pixels = (
        default_collate([item.pixels for item in good])
        if good
        else torch.empty((0, 3, IMAGE_SIZE, IMAGE_SIZE))
    )
    return PreparedBatch(
        refs=[item.ref for item in good],
        pixels=pixels,
        jpegs=[item.jpeg for item in good],
        sizes=[(item.width, item.height) for item in good],
        failures=[(item.ref, item.error) for item in items if item.pixels is None],
        hashes=[item.hash for item in good],
    )


class PreparedItems(IterableDataset):
    """The items of `refs`, prepared; in a DataLoader worker, only that worker's share."""

    def __init__(self, source: Source, refs: Sequence[ItemRef], limits: MediaLimits) -> None:
        self.source = source
        self.refs = refs
        self.limits = limits
        self.parent_pid = os.getpid()  # the ingest process; a worker gets this copy when it starts

    def __iter__(self) -> Iterator[PreparedItem]:
        worker = get_worker_info()
        first, step = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for index in range(first, len(self.refs), step):
            if worker is not None and os.getppid() != self.parent_pid:
                _exit_orphan()
            yield prepare_item(self.source, self.refs[index], self.limits)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _exit_orphan() -> None:
    """End a worker whose ingest died, at once: a normal exit would wait forever on its queue's
    feeder thread, which writes into a pipe no one reads any more."""
    os._exit(0)


def die_with_parent(worker_id: int, *, parent: int) -> None:
    """A DataLoader `worker_init_fn`: the worker gets SIGKILL when the ingest process dies (also
    by SIGKILL or an OOM kill), which torch's own watchdog misses when the worker is blocked
    writing a batch. The item loop checks the parent too, where `prctl` is not available."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError):
            log.warning("prctl is not available: workers rely on their parent check", exc_info=True)
    if os.getppid() != parent:  # the parent died before prctl took effect
        _exit_orphan()


def prepared_batches(
    source: Source,
    refs: Sequence[ItemRef],
    *,
    limits: MediaLimits,
    batch_size: int,
    workers: int,
) -> Iterator[PreparedBatch]:
    """Batches of up to `batch_size` prepared items, from `workers` processes (0: this one).

    Batches come from the workers in turn; every item of `refs` is in exactly one batch.
    """
    if not refs:
        return
    workers = min(workers, len(refs))
    loader = DataLoader(
        PreparedItems(source, refs, limits),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        prefetch_factor=2 if workers else None,
        worker_init_fn=partial(die_with_parent, parent=os.getpid()) if workers else None,
    )
    yield from loader
