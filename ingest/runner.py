"""`search-all ingest` end to end: open the store, the source, S3 and the encoder; run; close.

Everything is opened here in one `ExitStack` and closed in reverse order. First the dataset's
writer lock (`ingest.writer_lock`): a second ingest into the same dataset refuses. An existing
dataset opens before the model loads, so another model's dataset fails before seconds (or a
4.8 GB download) are spent. A new dataset is created only once the model has loaded, and a run
that created one and fails before its first commit deletes it again: a failed first run (no
network for the checkpoint, a source that cannot be read) leaves nothing that a later run with
another model would trip over. `overwrite` deletes the existing dataset, once the model has
loaded, and builds it anew. S3 is used when the source is `s3://...` or `[s3]
upload_images` is on; the dataset itself may be `s3://bucket/prefix` (`core.startup.store_creds`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from core.config import Secrets, Settings
from core.encoder import Encoder
from core.errors import ConfigError
from core.imagebind.configs import get_config
from core.s3.client import S3Connection
from core.startup import store_creds
from core.store.deeplake_store import DeepLakeStore
from ingest.index_policy import IndexDecision, refresh_index
from ingest.pipeline import IngestSummary, ingest
from ingest.sources.base import Source
from ingest.sources.factory import parse_source
from ingest.uploader import ImageUploader
from ingest.writer_lock import writer_lock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestReport:
    summary: IngestSummary
    index: IndexDecision

    def __str__(self) -> str:
        return str(self.summary)


def check_upload_settings(settings: Settings) -> None:
    """Uploaded images must be reachable by the replies: a public base URL or presigned URLs."""
    s3 = settings.s3
    if s3.upload_images and s3.url_mode == "public" and not settings.images.public_base_url:
        raise ConfigError(
            "[s3] upload_images = true keeps images only on S3, but replies could not link them:"
            " set [images] public_base_url, or [s3] url_mode = 'presigned'"
        )


def run_ingest(
    settings: Settings,
    source_spec: str,
    *,
    secrets: Secrets | None = None,
    workers: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    s3_page_size: int = 1000,
    follow_links: bool = False,
    overwrite: bool = False,
    sync: bool = False,
    notify: Callable[[str], None] = log.warning,
    ray: str | None = None,
) -> IngestReport:
    """Ingest `source_spec` into `[store] dataset`; `workers` / `batch_size` override `[ingest]`;
    `follow_links`: index a folder's links to files outside it too; `overwrite`: delete the
    dataset and build it anew (said through `notify`); `sync`: also re-index changed files and
    remove rows whose file is gone (`ingest.pipeline.ingest`); `ray`: decode and encode on the
    Ray cluster at this address, or "auto" (`ingest.ray_ingest`; the model loads there)."""
    secrets = secrets or Secrets.from_env()
    check_upload_settings(settings)
    connection = S3Connection.from_settings(
        settings.store, secrets, max_pool_connections=max(10, settings.s3.upload_threads)
    )
    source = parse_source(
        source_spec,
        s3=connection,
        s3_page_size=s3_page_size,
        follow_links=follow_links,
        max_file_bytes=settings.limits.max_file_bytes,
    )
    path = settings.store.dataset
    creds = store_creds(settings, secrets)

    def open_store() -> DeepLakeStore:
        return DeepLakeStore.open_or_create(
            path,
            model_name=settings.model.name,
            dim=get_config(settings.model.name).out_dim,
            creds=creds,
            mode=settings.store.search,
            exact_max_rows=settings.store.exact_max_rows,
            preload=False,
        )

    with ExitStack() as stack:
        stack.enter_context(writer_lock(path, connection))
        existed = DeepLakeStore.exists(path, creds=creds)
        store = None
        if existed and not overwrite:
            store = open_store()  # another model's dataset fails here, before the model loads
            stack.callback(store.close)
        uploader = None
        if settings.s3.upload_images:
            assert settings.s3.bucket is not None  # checked by S3Settings
            uploader = stack.enter_context(
                ImageUploader(connection, settings.s3.bucket, settings.s3.prefix, settings.s3.upload_threads)
            )
        # With Ray the model loads in the cluster's actors, not here.
        encoder = None if ray else Encoder.load(settings.model, settings.limits, progress=progress)
        created = store is None
        if store is None:
            if existed:
                _delete_for_overwrite(path, creds, notify, settings.model.name)
            store = open_store()
            stack.callback(store.close)
        try:
            if encoder is None:
                summary = _ray_ingest(settings, source, store, uploader, batch_size, progress, sync, ray)
            else:
                summary = ingest(
                    source,
                    store=store,
                    encoder=encoder,
                    batch_size=batch_size or settings.ingest.batch_size,
                    workers=settings.ingest.workers if workers is None else workers,
                    uploader=uploader,
                    keep_jpeg=settings.s3.keep_in_dataset,
                    progress=progress,
                    sync=sync,
                )
        except BaseException:
            if created and store.info.rows == 0:
                _remove_new_dataset(store, path, creds)
            raise
        index = refresh_index(store, settings.store)
    return IngestReport(summary, index)


def _ray_ingest(
    settings: Settings,
    source: Source,
    store: DeepLakeStore,
    uploader: ImageUploader | None,
    batch_size: int | None,
    progress: bool,
    sync: bool,
    address: str,
) -> IngestSummary:
    try:
        from ingest.ray_ingest import RayOptions, ray_ingest
    except ImportError as exc:
        raise ConfigError(f"--ray needs Ray Data: pip install 'search-all[ray]' ({exc})") from exc
    return ray_ingest(
        source,
        store=store,
        model=settings.model,
        limits=settings.limits,
        batch_size=batch_size or settings.ingest.batch_size,
        uploader=uploader,
        keep_jpeg=settings.s3.keep_in_dataset,
        progress=progress,
        sync=sync,
        options=RayOptions(address=address),
    )


def _delete_for_overwrite(path: str, creds: dict | None, notify: Callable[[str], None], model: str) -> None:
    """`--overwrite`: delete the dataset at `path`, saying what is deleted."""
    try:
        with DeepLakeStore.open(path, creds=creds, preload=False) as old:
            what = f"{old.info.rows} rows, model '{old.info.model_name}'"
    except Exception as exc:  # noqa: BLE001 - whatever it is, it is being replaced
        what = f"unreadable: {exc}"
    DeepLakeStore.delete_dataset(path, creds=creds)
    notify(f"--overwrite: deleted dataset {path} ({what}); rebuilding it with model '{model}'")


def _remove_new_dataset(store: DeepLakeStore, path: str, creds: dict | None) -> None:
    """Delete the dataset this run created when it failed before its first commit."""
    store.close()
    try:
        DeepLakeStore.delete_dataset(path, creds=creds)
    except Exception:  # the run's own error is the one to report
        log.exception("could not remove the empty dataset %s this failed run created", path)
    else:
        log.warning("removed the empty dataset %s this failed run created", path)
