"""`ChannelMemory`: what a front end calls to run channel memory (the API of docs/memory.md).

A front end decides who may do what (Manage Channels, channel membership, ...) and computes the
channels a person may read; this class does the rest: it keeps the registry of channels that
are on, turns posted images into thumbnails and embeddings (through the encoder worker, as
background work behind interactive queries) and writes, forgets and counts them. Every method
that touches the disk or the model is async and runs its blocking part in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

from core.config import MediaLimits, MemorySettings
from core.errors import SearchAllError
from core.media.image import decode_image, encode_jpeg
from core.memory.channels import ChannelRegistry
from core.memory.model import (
    BackfillProgress,
    ChannelStatus,
    PostedImage,
    Tenant,
    check_id,
)
from core.memory.store import MemoryRecord, MemoryStore
from core.worker import EncoderWorker

log = logging.getLogger(__name__)
T = TypeVar("T")

MEMORY_OFF = ("channel memory is not enabled on this bot: its operator can turn it on with "
              "[memory] enabled = true (docs/memory.md)")


class MemoryUnavailableError(SearchAllError):
    """Channel memory was asked for but the operator has not enabled it."""

    def __init__(self) -> None:
        super().__init__(MEMORY_OFF)


@dataclass(frozen=True)
class IndexReport:
    """What `ChannelMemory.index` did with the images it was given."""

    indexed: int  # written
    skipped: int  # channel off, or already remembered
    failed: int  # not an image it could read (logged)


@dataclass(frozen=True)
class _Prepared:
    image: PostedImage
    picture: Image.Image
    thumbnail: bytes
    width: int
    height: int


class ChannelMemory:
    """Channel memory over one `MemoryStore`, `ChannelRegistry` and encoder worker."""

    def __init__(self, store: MemoryStore, registry: ChannelRegistry, worker: EncoderWorker,
                 settings: MemorySettings, limits: MediaLimits) -> None:
        self.store = store
        self.registry = registry
        self.worker = worker
        self.settings = settings
        self.limits = limits
        # Indexing's own CPU work (decoding, thumbnails, writing) runs one step at a time and
        # keeps to the worker's background share while queries come (`EncoderWorker.background_pause`).
        self._paced = asyncio.Lock()

    # ----- which channels ------------------------------------------------------------------

    def is_on(self, tenant: Tenant, channel: str) -> bool:
        """Whether images posted in `channel` are remembered now (fast: no I/O)."""
        return self.registry.is_on(tenant, channel)

    def channels_on(self, tenant: Tenant) -> set[str]:
        return self.registry.channels_on(tenant)

    def channels_with_memory(self, tenant: Tenant) -> set[str]:
        """Channels that may hold remembered images (on now, or on once and not forgotten): the
        ones a front end checks the asker's access to at query time."""
        return self.registry.known_channels(tenant)

    # ----- the commands -----------------------------------------------------------------------

    async def enable(self, tenant: Tenant, channel: str, *, by: str, backfill: int = 0) -> ChannelStatus:
        """Turn memory on in `channel` (from now); with `backfill` > 0, record a backfill of up
        to that many past messages (clamped to `[memory] backfill_max`) for the front end to run."""
        self._check_enabled()
        check_id(channel, "channel id")
        await asyncio.to_thread(self.registry.turn_on, tenant, channel, by)
        if backfill > 0:
            wanted = min(backfill, self.settings.backfill_max)
            await asyncio.to_thread(self.registry.start_backfill, tenant, channel, wanted)
        return await self.status(tenant, channel)

    async def disable(self, tenant: Tenant, channel: str) -> ChannelStatus:
        """Stop remembering new images in `channel`; what is remembered stays until forgotten."""
        await asyncio.to_thread(self.registry.turn_off, tenant, channel)
        return await self.status(tenant, channel)

    async def status(self, tenant: Tenant, channel: str) -> ChannelStatus:
        def read() -> ChannelStatus:
            since, by = self.registry.since(tenant, channel)
            return ChannelStatus(
                tenant=tenant, channel=channel, on=self.registry.is_on(tenant, channel), since=since, by=by,
                images=self.store.count(tenant, channel), oldest=self.store.oldest(tenant, channel),
                backfill=self.registry.backfill(tenant, channel),
            )

        return await asyncio.to_thread(read)

    async def tenant_images(self, tenant: Tenant) -> int:
        return await asyncio.to_thread(self.store.count, tenant)

    # ----- forgetting ----------------------------------------------------------------------------

    async def forget_channel(self, tenant: Tenant, channel: str) -> int:
        """Turn the channel off and erase what it remembered (a channel deleted, or `forget`)."""

        def run() -> int:
            self.registry.forget_channel(tenant, channel)
            return self.store.delete(tenant, channel=channel)

        return await asyncio.to_thread(run)

    async def forget_tenant(self, tenant: Tenant) -> int:
        """Erase a whole server's or workspace's memory and settings (bot removed, or `forget`)."""

        def run() -> int:
            self.registry.forget_tenant(tenant)
            return self.store.drop(tenant)

        return await asyncio.to_thread(run)

    async def forget_author(self, tenant: Tenant, author: str) -> int:
        """Erase every image `author` posted in this tenant (`forget-mine`)."""
        return await asyncio.to_thread(lambda: self.store.delete(tenant, author=author))

    async def forget_message(self, tenant: Tenant, message: str, *, keep_items: Collection[str] | None = None) -> int:
        """Erase the images of a deleted message; `keep_items`: those the edited message still has."""
        return await asyncio.to_thread(
            lambda: self.store.delete(tenant, message=message, keep_items=keep_items)
        )

    # ----- indexing ----------------------------------------------------------------------------

    async def index(self, images: Sequence[PostedImage]) -> IndexReport:
        """Remember `images` whose channel is on: thumbnails made and embeddings computed as
        background work of the encoder (behind every query), then written per tenant in one
        commit each. Unreadable files are skipped (and logged), never fatal."""
        self._check_enabled()
        wanted = [im for im in images if self.registry.is_on(im.tenant, im.channel)]
        skipped = len(images) - len(wanted)
        prepared = [await self._pace(self._prepare, im) for im in wanted]
        ready = [p for p in prepared if p is not None]
        failed = len(wanted) - len(ready)
        vectors = await asyncio.gather(
            *(self.worker.embed("image", p.picture, background=True) for p in ready), return_exceptions=True
        )
        by_tenant: dict[Tenant, list[MemoryRecord]] = {}
        for p, vector in zip(ready, vectors, strict=True):
            if isinstance(vector, BaseException):
                log.warning("could not embed image %s of message %s: %s", p.image.item, p.image.message, vector)
                failed += 1
                continue
            by_tenant.setdefault(p.image.tenant, []).append(self._record(p, np.asarray(vector)))
        indexed = 0
        for tenant, records in by_tenant.items():
            indexed += await self._pace(self.store.add, tenant, records)
        skipped += sum(len(r) for r in by_tenant.values()) - indexed
        return IndexReport(indexed=indexed, skipped=skipped, failed=failed)

    async def _pace(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in a thread, one at a time, then a pause that keeps indexing to its share."""
        async with self._paced:
            start = time.perf_counter()
            try:
                return await asyncio.to_thread(fn, *args)
            finally:
                await asyncio.sleep(self.worker.background_pause(time.perf_counter() - start))

    def _prepare(self, image: PostedImage) -> _Prepared | None:
        try:
            picture = decode_image(image.data, self.limits)
        except SearchAllError as exc:
            log.info("not remembering %s of message %s: %s", image.item, image.message, exc)
            return None
        thumb = picture.copy()
        side = self.settings.thumbnail_side
        thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
        data = encode_jpeg(thumb, quality=self.settings.thumbnail_quality)  # writes no metadata
        return _Prepared(image, picture, data, picture.width, picture.height)

    @staticmethod
    def _record(p: _Prepared, vector: np.ndarray) -> MemoryRecord:
        im = p.image
        return MemoryRecord(
            id=im.record_id, embedding=vector, text=im.text, channel=im.channel, message=im.message, item=im.item,
            author=im.author, posted_at=im.posted_at, link=im.link, thumbnail=p.thumbnail,
            width=p.width, height=p.height,
        )

    # ----- backfill bookkeeping (the front end reads the platform's history) ---------------------

    def backfill(self, tenant: Tenant, channel: str) -> BackfillProgress | None:
        return self.registry.backfill(tenant, channel)

    async def save_backfill(self, tenant: Tenant, channel: str, progress: BackfillProgress) -> None:
        await asyncio.to_thread(self.registry.save_backfill, tenant, channel, progress)

    def unfinished_backfills(self) -> list[tuple[Tenant, str, BackfillProgress]]:
        """Backfills to resume after a restart (channels still on)."""
        return self.registry.unfinished_backfills()

    def _check_enabled(self) -> None:
        if not self.settings.enabled:
            raise MemoryUnavailableError()

    def close(self) -> None:
        self.store.close()
        self.registry.close()
