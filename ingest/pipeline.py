"""Ingest: list the source, skip what is in, decode in workers, encode here, commit batch by batch.

1. The source is listed (no image is read) and ids already in the store are dropped, so a
   resumed ingest downloads and decodes only what is missing.
2. Worker processes read, decode and preprocess the rest (`ingest.loader`); the model runs in
   this process on each batch as it arrives, while the batch's images upload to S3 (when
   configured, `ingest.uploader`).
3. Each batch is appended and committed at once (`VectorStore.append`): a killed ingest keeps
   every finished batch and loses at most the one in flight, which the next run redoes. Ids are
   stable, so every image ends up in the dataset exactly once.

A file that is not a valid image is logged and counted as failed; it never stops the run. Files
a source passes over by their type (a folder's `.txt`, `.pdf`) are counted in the summary.

Each row keeps its `content_hash` (`content_hash`: an S3 object's ETag from the listing, else
the SHA-256 of the bytes read). With `sync`, items already in the store are fingerprinted the
same way (a folder's files are read again, S3 objects are not) and those that changed, or that
have no hash yet (a dataset written before hashes), are indexed again in place; rows whose id is
no longer in the source are removed. Images uploaded to S3 are left there (content-addressed,
another row may share one).

With uploads on, a run first checks that the S3 objects the rows point to still exist (a listing
of their prefix, 1,000 keys a request) and puts back the vanished ones, from the dataset's copy
or, without one, read again from the source.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
from tqdm import tqdm

from core.config import MediaLimits
from core.encoder import Encoder
from core.store.base import Record, VectorStore
from ingest.loader import PreparedBatch, content_hash, prepared_batches
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
    restored: int = 0  # images the dataset links that had vanished from S3, put back
    seconds: float = 0.0
    sync: bool = False
    updated: int = 0  # --sync: rows indexed again because their file changed
    removed: int = 0  # --sync: rows whose file is gone from the source
    not_images: dict[str, int] = field(default_factory=dict)  # files passed over, by suffix

    def __str__(self) -> str:
        uploaded = f", uploaded {self.uploaded} to S3" if self.uploaded else ""
        restored = f", put back {self.restored} missing from S3" if self.restored else ""
        if self.sync:
            counts = (
                f"added {self.added}, updated {self.updated}, removed {self.removed}, "
                f"{self.skipped} unchanged, failed {self.failed}"
            )
        else:
            counts = f"added {self.added}, skipped {self.skipped} already present, failed {self.failed}"
        return f"{counts}{self._not_images()}{uploaded}{restored}, in {self.seconds:.1f} s"

    def _not_images(self) -> str:
        if not self.not_images:
            return ""
        count = sum(self.not_images.values())
        kinds = ", ".join(sorted(self.not_images))
        return f", skipped {count} not image{'s' if count != 1 else ''} ({kinds})"


def _chunks(refs: Iterator[ItemRef], size: int) -> Iterator[list[ItemRef]]:
    while chunk := list(islice(refs, size)):
        yield chunk


def pending_refs(
    source: Source, store: VectorStore, reread: Collection[str] = (), *, keep_present: bool = False
) -> tuple[list[ItemRef], int, list[ItemRef]]:
    """The source's items not in `store` yet (each id once), how many were skipped, and the
    items of `reread` (ids in the store whose image must be read again) found in the source;
    with `keep_present`, every item found in the store is in that last list."""
    todo: list[ItemRef] = []
    again: list[ItemRef] = []
    seen: set[str] = set()
    skipped = 0
    for chunk in _chunks(source.refs(), LIST_CHUNK):
        present = store.existing_ids([ref.id for ref in chunk])
        for ref in chunk:
            if ref.id in present or ref.id in seen:
                skipped += 1
                if (keep_present or ref.id in reread) and ref.id not in seen:
                    again.append(ref)
            else:
                todo.append(ref)
            seen.add(ref.id)
    return todo, skipped, again


def changed_refs(source: Source, store: VectorStore, refs: list[ItemRef]) -> tuple[list[ItemRef], set[str]]:
    """`--sync`: the items of `refs` (all in the store) whose content differs from what their row
    was built from, and the store's ids that are no longer in `refs`' source listing."""
    stored = store.content_hashes()  # type: ignore[attr-defined]
    changed = []
    for ref in refs:
        try:
            current = content_hash(source, ref)
        except Exception as exc:  # noqa: BLE001 - unreadable now: its row is left as it is
            log.warning("cannot read %s to check it: %s", ref.id, exc)
            continue
        if stored.get(ref.id, "") != current:
            changed.append(ref)
    return changed, set(stored)


def vanished_uploads(store: VectorStore, uploader: ImageUploader) -> tuple[int, dict[str, str]]:
    """Put back the S3 objects rows point to that are gone from the bucket, from the dataset's
    own copies; the count put back, and `{id: key}` of the rows with no copy (read again from
    the source by `restore_uploads`)."""
    s3_keys = getattr(store, "s3_keys", None)
    rows = s3_keys() if s3_keys else []
    missing = uploader.missing(key for _, _, key in rows) if rows else set()
    if missing:
        log.warning("%d image(s) the dataset links are missing from S3: putting them back", len(missing))
    restored, reread = 0, {}
    for row, id_, key in rows:
        if key not in missing:
            continue
        data = store.image_bytes(row)
        if data:
            uploader.put(key, data)
            restored += 1
        else:
            reread[id_] = key
    return restored, reread


def restore_uploads(
    source: Source,
    refs: list[ItemRef],
    keys: dict[str, str],
    uploader: ImageUploader,
    limits: MediaLimits,
    batch_size: int,
) -> int:
    """Read `refs` from the source again and upload each image under the key its row has."""
    restored = 0
    for batch in prepared_batches(source, refs, limits=limits, batch_size=batch_size, workers=0):
        for ref, reason in batch.failures:
            log.warning("cannot restore %s on S3: %s", ref.id, reason)
        for ref, jpeg in zip(batch.refs, batch.jpegs, strict=True):
            uploader.put(keys[ref.id], jpeg)
            restored += 1
    return restored


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
    return make_records(batch.refs, vectors, batch.jpegs, keys, batch.sizes, source_name, keep_jpeg)


def make_records(
    refs: Sequence[ItemRef],
    vectors: Sequence[np.ndarray],
    jpegs: Sequence[bytes],
    keys: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    source_name: str,
    keep_jpeg: bool,
) -> list[Record]:
    """The rows of a batch: `refs[i]` embedded as `vectors[i]`, its JPEG uploaded under
    `keys[i]` ("" when not uploaded)."""
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
        for ref, vector, jpeg, key, (width, height) in zip(refs, vectors, jpegs, keys, sizes, strict=True)
    ]


def note_failures(summary: IngestSummary, failures: Sequence[tuple[ItemRef, str]]) -> None:
    for ref, reason in failures:
        log.warning("skipping %s: %s", ref.id, reason)
    summary.failed += len(failures)


def write_records(
    store: VectorStore, records: list[Record], hashes: list[str], summary: IngestSummary, *, sync: bool
) -> None:
    """Append (with `sync`: upsert) one batch's rows and commit them, counting into `summary`."""
    stored_hashes = getattr(store, "content_hashes", None) and hashes
    if sync:
        added, updated = store.upsert(records, content_hashes=stored_hashes)  # type: ignore[attr-defined]
        summary.added += added
        summary.updated += updated
    elif stored_hashes:
        summary.added += store.append(records, content_hashes=stored_hashes)  # type: ignore[call-arg]
    else:
        summary.added += store.append(records)
    summary.uploaded += sum(1 for r in records if r.s3_key)
    log.info("committed %d records (%d in the dataset)", len(records), store.info.rows)


def plan_ingest(
    source: Source,
    store: VectorStore,
    *,
    limits: MediaLimits,
    batch_size: int,
    uploader: ImageUploader | None,
    sync: bool,
) -> tuple[list[ItemRef], IngestSummary]:
    """Everything before the first image is read for indexing: S3 objects the rows point to put
    back, ids already in the store dropped, and with `sync` changed items added and gone rows
    removed. The items still to index, and the summary so far."""
    summary = IngestSummary(sync=sync)
    if sync and not hasattr(store, "content_hashes"):
        raise TypeError(f"{type(store).__name__} cannot sync: it keeps no content hashes")
    restored, reread = vanished_uploads(store, uploader) if uploader else (0, {})
    todo, summary.skipped, again = pending_refs(source, store, reread, keep_present=sync)
    summary.not_images = dict(getattr(source, "not_images", {}) or {})
    present: list[ItemRef] = []
    if sync:
        present = [ref for ref in again if ref.id not in reread]
        again = [ref for ref in again if ref.id in reread]
        changed, stored_ids = changed_refs(source, store, present)
        gone = stored_ids - {ref.id for ref in present}
        if gone:
            summary.removed = store.delete_ids(sorted(gone))  # type: ignore[attr-defined]
            log.info("removed %d row(s) whose file is gone from %s", summary.removed, source.name)
        summary.skipped -= len(changed)
        todo = todo + changed
    if again:
        assert uploader is not None
        restored += restore_uploads(source, again, reread, uploader, limits, batch_size)
    if len(again) < len(reread):
        log.warning("%d image(s) missing from S3 are no longer in the source", len(reread) - len(again))
    summary.restored = restored
    log.info("%s: %d to index, %d already present", source.name, len(todo), summary.skipped)
    return todo, summary


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
    sync: bool = False,
) -> IngestSummary:
    """Index every image of `source` not yet in `store`; with `sync`, also index changed ones
    again and remove the rows of those gone (see the module docstring)."""
    start = time.perf_counter()
    todo, summary = plan_ingest(
        source, store, limits=encoder.limits, batch_size=batch_size, uploader=uploader, sync=sync
    )
    batches = prepared_batches(source, todo, limits=encoder.limits, batch_size=batch_size, workers=workers)
    with tqdm(total=len(todo), unit="img", disable=not progress, desc="ingest", smoothing=0.1) as bar:
        for batch in batches:
            note_failures(summary, batch.failures)
            if batch.refs:
                records = _records(batch, encoder, source.name, uploader, keep_jpeg)
                write_records(store, records, batch.hashes, summary, sync=sync)
            bar.update(len(batch))
            if summary.failed:
                bar.set_postfix(failed=summary.failed, refresh=False)
    summary.seconds = time.perf_counter() - start
    return summary
