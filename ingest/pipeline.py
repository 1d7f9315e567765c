"""Ingest: source items -> decoded, validated images -> embeddings -> DeepLake, batch by batch.

Each batch is committed as soon as it is written, so an interrupted ingest keeps every finished
batch, and re-running skips ids already in the dataset. A file that is not a valid image is
logged and counted as failed; it never stops the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

from PIL import Image
from tqdm import tqdm

from core.config import MediaLimits
from core.encoder import Encoder
from core.errors import BadInputError
from core.media.image import decode_image, encode_jpeg
from core.store import Record, VectorStore
from ingest.sources import SourceItem

log = logging.getLogger(__name__)

STORED_MAX_SIDE = 1024


@dataclass
class IngestSummary:
    added: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (
            f"added {self.added}, skipped {self.skipped} already present, "
            f"failed {self.failed}, in {self.seconds:.1f} s"
        )


def _batches(items: Iterable[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def stored_jpeg(data: bytes, image: Image.Image) -> bytes:
    """The bytes kept in the dataset: the original JPEG when small enough, else a resized JPEG."""
    if data[:3] == b"\xff\xd8\xff" and max(image.size) <= STORED_MAX_SIDE:
        return data
    copy = image.copy()
    copy.thumbnail((STORED_MAX_SIDE, STORED_MAX_SIDE), Image.Resampling.LANCZOS)
    return encode_jpeg(copy)


def _decode(item: SourceItem, limits: MediaLimits) -> tuple[bytes, Image.Image] | None:
    try:
        data = item.read()
        return data, decode_image(data, limits)
    except (BadInputError, OSError) as exc:
        log.warning("skipping %s: %s", item.id, exc)
        return None


def ingest(
    items: Iterable[SourceItem],
    *,
    source_name: str,
    store: VectorStore,
    encoder: Encoder,
    batch_size: int = 16,
    total: int | None = None,
    progress: bool = True,
) -> IngestSummary:
    summary = IngestSummary()
    start = time.perf_counter()
    with tqdm(total=total, unit="img", disable=not progress, desc="ingest") as bar:
        for batch in _batches(items, batch_size):
            present = store.existing_ids([item.id for item in batch])
            todo = [item for item in batch if item.id not in present]
            summary.skipped += len(batch) - len(todo)
            decoded = [(item, _decode(item, encoder.limits)) for item in todo]
            good = [(item, d) for item, d in decoded if d is not None]
            summary.failed += len(decoded) - len(good)
            if good:
                vectors = encoder.embed("image", [image for _, (_, image) in good])
                records = [
                    Record(
                        id=item.id,
                        embedding=vector,
                        text=item.text,
                        source=source_name,
                        image_jpeg=stored_jpeg(data, image),
                        s3_key="",
                        width=image.width,
                        height=image.height,
                    )
                    for (item, (data, image)), vector in zip(good, vectors, strict=True)
                ]
                summary.added += store.append(records)
            bar.update(len(batch))
    summary.seconds = time.perf_counter() - start
    return summary
