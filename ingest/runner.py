"""`search-all ingest` end to end: open the store, the source, S3 and the encoder; run; close.

Everything is opened here in one `ExitStack` and closed in reverse order. First the dataset's
writer lock (`ingest.writer_lock`): a second ingest into the same dataset refuses. The store opens
before the model loads, so a wrong dataset path or another model's dataset fails before seconds
(or a 4.8 GB download) are spent. S3 is used when the source is `s3://...` or `[s3]
upload_images` is on; the dataset itself may be `s3://bucket/prefix` (`core.startup.store_creds`).
"""

from __future__ import annotations

import logging
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
) -> IngestReport:
    """Ingest `source_spec` into `[store] dataset`; `workers` / `batch_size` override `[ingest]`;
    `follow_links`: index a folder's links to files outside it too."""
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
    with ExitStack() as stack:
        stack.enter_context(writer_lock(settings.store.dataset, connection))
        store = DeepLakeStore.open_or_create(
            settings.store.dataset,
            model_name=settings.model.name,
            dim=get_config(settings.model.name).out_dim,
            creds=store_creds(settings, secrets),
            mode=settings.store.search,
            exact_max_rows=settings.store.exact_max_rows,
            preload=False,
        )
        stack.callback(store.close)
        uploader = None
        if settings.s3.upload_images:
            assert settings.s3.bucket is not None  # checked by S3Settings
            uploader = stack.enter_context(
                ImageUploader(connection, settings.s3.bucket, settings.s3.prefix, settings.s3.upload_threads)
            )
        encoder = Encoder.load(settings.model, settings.limits, progress=progress)
        summary = ingest(
            source,
            store=store,
            encoder=encoder,
            batch_size=batch_size or settings.ingest.batch_size,
            workers=settings.ingest.workers if workers is None else workers,
            uploader=uploader,
            keep_jpeg=settings.s3.keep_in_dataset,
            progress=progress,
        )
        index = refresh_index(store, summary.added, settings.store)
    return IngestReport(summary, index)
