"""Ingest: list the source, skip what is in, decode in workers, encode here, commit batch by batch.

1. The source is listed (no image is read) and ids already in the store are dropped, so a
   resumed ingest downloads and decodes only what is missing.
2. Worker processes read, decode and preprocess the rest (`ingest.loader`); the model runs in
   this process on each batch as it arrives, while the batch's images upload to S3 (when
   configured, `ingest.uploader`).
3. Each batch is appended and committed at once (`VectorStore.append`): a killed ingest keeps
   every finished batch and loses at most the one in flight, which the next run redoes. Ids are
   stable, so every image ends up in the dataset exactly once.

A file that is not a valid image is logged and counted as failed; it never stops the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from tqdm import tqdm

from core.encoder import Encoder
from core.store.base import Record, VectorStore
from ingest.loader import PreparedBatch, prepared_batches
from ingest.sources.base import ItemRef, Source
from ingest.uploader import ImageUploader

log = logging.getLogger(__name__)

LIST_CHUNK = 4096  # ids checked against the store per call while listing


@dataclass
class IngestSummary:
    added: int = 0
    skipped: int = 0
    failed: int = 0
    uploaded: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        uploaded = f", uploaded {self.uploaded} to S3" if self.uploaded else ""
        return (
            f"added {self.added}, skipped {self.skipped} already present, "
            f"failed {self.failed}{uploaded}, in {self.seconds:.1f} s"
        )


def _chunks(refs: Iterator[ItemRef], size: int) -> Iterator[list[ItemRef]]:
    while chunk := list(islice(refs, size)):
        yield chunk


def pending_refs(source: Source, store: VectorStore) -> tuple[list[ItemRef], int]:
    """The source's items not in `store` yet (each id once), and how many were skipped."""
    todo: list[ItemRef] = []
    seen: set[str] = set()
    skipped = 0
    for chunk in _chunks(source.refs(), LIST_CHUNK):
        present = store.existing_ids([ref.id for ref in chunk])
        for ref in chunk:
            if ref.id in present or ref.id in seen:
                skipped += 1
            else:
                seen.add(ref.id)
                todo.append(ref)
    return todo, skipped


def _records(
    batch: PreparedBatch,
    encoder: Encoder,
    source_name: str,
    uploader: ImageUploader | None,
    keep_jpeg: bool,
) -> list[Record]:
    uploads = uploader.submit(batch.jpegs) if uploader else None  # run while the model does
    vectors = encoder.forward("image", batch.pixels)
    keys = ImageUploader.keys(uploads) if uploads else [""] * len(batch.refs)
    return [
        Record(
            id=ref.id,
            embedding=vector,
            text=ref.text,
            source=source_name,
            # On S3 the dataset keeps the key, and a copy (keep_jpeg) for when S3 is down.
            image_jpeg=jpeg if keep_jpeg or not key else None,
            s3_key=key,
            width=width,
            height=height,
        )
        for ref, vector, jpeg, key, (width, height) in zip(
            batch.refs, vectors, batch.jpegs, keys, batch.sizes, strict=True
        )
    ]


def ingest(
    source: Source,
    *,
    store: VectorStore,
    encoder: Encoder,
    batch_size: int = 16,
    workers: int = 0,
    uploader: ImageUploader | None = None,
    keep_jpeg: bool = True,
    progress: bool = True,
) -> IngestSummary:
    """Index every image of `source` not yet in `store` (see the module docstring)."""
    summary = IngestSummary()
    start = time.perf_counter()
    todo, summary.skipped = pending_refs(source, store)
    log.info("%s: %d to index, %d already present", source.name, len(todo), summary.skipped)
    batches = prepared_batches(source, todo, limits=encoder.limits, batch_size=batch_size, workers=workers)
    with tqdm(total=len(todo), unit="img", disable=not progress, desc="ingest", smoothing=0.1) as bar:
        for batch in batches:
            for ref, reason in batch.failures:
                log.warning("skipping %s: %s", ref.id, reason)
            summary.failed += len(batch.failures)
            if batch.refs:
                records = _records(batch, encoder, source.name, uploader, keep_jpeg)
                summary.added += store.append(records)
                summary.uploaded += sum(1 for r in records if r.s3_key)
                log.info("committed %d records (%d in the dataset)", len(records), store.info.rows)
            bar.update(len(batch))
            if summary.failed:
                bar.set_postfix(failed=summary.failed, refresh=False)
    summary.seconds = time.perf_counter() - start
    return summary
