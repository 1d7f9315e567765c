"""Startup: open the store, load the encoder, start its worker, hand out a SearchService.

Everything is opened here, in one `AsyncExitStack`-shaped context, and closed in reverse order;
nothing is built at import time. The store opens first so that a wrong dataset path or a model
mismatch fails before seconds (or a 4.8 GB download) are spent on the model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from core.config import MODEL_NAMES, Secrets, Settings
from core.encoder import Encoder
from core.errors import ModelMismatchError
from core.imagebind.configs import get_config
from core.memory.channels import ChannelRegistry
from core.memory.memory import ChannelMemory
from core.memory.store import MemoryStore
from core.metrics import Metrics
from core.page_memory import PageMemory
from core.s3.client import S3Connection
from core.s3.locator import ImageLocator
from core.service import SearchService
from core.speech import speech_policy
from core.store.deeplake_store import DeepLakeStore
from core.worker import EncoderWorker

log = logging.getLogger(__name__)


def store_creds(settings: Settings, secrets: Secrets) -> dict[str, str] | None:
    """DeepLake credentials for an `s3://` dataset: endpoint and region from config, keys from
    boto3's default chain (environment with its session token, profile, instance role)."""
    if not settings.store.dataset.startswith("s3://"):
        return None
    return S3Connection.from_settings(settings.store, secrets).deeplake_creds()


def with_model_of(settings: Settings, recorded: str) -> Settings:
    """`settings` with the model a dataset records, when none was chosen (so `--model tiny`
    need not be repeated for a dataset the tiny model built)."""
    if recorded not in MODEL_NAMES:
        raise ModelMismatchError(
            f"dataset {settings.store.dataset} was built with model {recorded!r}, which this program "
            f"does not know: pass --model ({', '.join(MODEL_NAMES)}) or rebuild it"
        )
    if recorded != settings.model.name:
        log.info("model %r, as recorded by dataset %s", recorded, settings.store.dataset)
    return settings.model_copy(update={"model": settings.model.model_copy(update={"name": recorded})})


@asynccontextmanager
async def open_search_service(
    settings: Settings, *, secrets: Secrets | None = None, progress: bool = True, warm_speech: bool = True
) -> AsyncIterator[SearchService]:
    """The search service of `settings`, open while inside. `warm_speech`: start the speech
    worker and load its recogniser now, in the background (a running bot: the first voice note
    is then fast); otherwise it starts with the first voice clip (a one-off CLI search)."""
    secrets = secrets or Secrets.from_env()
    chosen = "name" in settings.model.model_fields_set  # by --model, the TOML or the environment
    async with AsyncExitStack() as stack:
        store = await asyncio.to_thread(
            DeepLakeStore.open,
            settings.store.dataset,
            creds=store_creds(settings, secrets),
            expect_model=settings.model.name if chosen else None,
            mode=settings.store.search,
            exact_max_rows=settings.store.exact_max_rows,
        )
        stack.callback(store.close)
        if not chosen:
            settings = with_model_of(settings, store.info.model_name)
        model_dim = get_config(settings.model.name).out_dim
        if model_dim != store.info.dim:
            raise ModelMismatchError(
                f"dataset {settings.store.dataset} holds {store.info.dim}-d vectors but model "
                f"{settings.model.name!r} makes {model_dim}-d ones: rebuild the dataset with this model"
            )
        encoder = await asyncio.to_thread(Encoder.load, settings.model, settings.limits, progress=progress)
        worker = await stack.enter_async_context(
            EncoderWorker(
                encoder,
                batch_window_ms=settings.encoder.batch_window_ms,
                max_batch_size=settings.encoder.max_batch_size,
                background_batch_size=settings.memory.index_batch_size,
                background_share=settings.memory.index_share,
            )
        )
        memory = open_channel_memory(settings, worker) if settings.memory.enabled else None
        if memory is not None:
            stack.callback(memory.close)
        pages = PageMemory(
            settings.search.page_memory_path or settings.model.cache_dir / "pages.sqlite",
            max_age_days=settings.search.page_memory_days,
        )
        stack.callback(pages.close)
        # Voice read as speech (docs/speech.md), by a recogniser in a worker process of its own.
        audio = speech_policy(settings.speech, settings.limits, in_process=True)
        if warm_speech:
            audio.start()
        stack.push_async_callback(audio.aclose)
        metrics = Metrics()
        metrics.watch_batches(lambda: worker.batch_sizes)
        freshness = Freshness()
        metrics.watch_dataset(lambda: store.info.rows, freshness.age_s, lambda: freshness.failures)
        service = SearchService(
            worker,
            store,
            settings.search,
            locator=ImageLocator.from_settings(settings, secrets),
            text_cache_size=settings.encoder.text_cache_size,
            # The tiny model's random weights give scores that mean nothing: no cut-offs.
            cutoffs=None if settings.model.name == "tiny" else settings.search.cutoffs,
            pages=pages,
            metrics=metrics,
            audio=audio,
            memory=memory,
        )
        health = service.locator.health
        if health is not None:
            watcher = asyncio.create_task(health.watch(settings.s3.health_check_seconds))
            stack.push_async_callback(_cancel, watcher)
        if settings.ops.refresh_seconds > 0:
            refresher = asyncio.create_task(refresh_forever(service, settings.ops.refresh_seconds, freshness))
            stack.push_async_callback(_cancel, refresher)
        yield service


def open_channel_memory(settings: Settings, worker: EncoderWorker) -> ChannelMemory:
    """Channel memory under `[memory] dir` (docs/memory.md), for the model `settings` name."""
    root = settings.memory.dir
    store = MemoryStore(root, model_name=settings.model.name, dim=get_config(settings.model.name).out_dim,
                        max_open=settings.memory.max_open_tenants)
    registry = ChannelRegistry(root / "channels.sqlite")
    return ChannelMemory(store, registry, worker, settings.memory, settings.limits)


@dataclass
class Freshness:
    """When the service last reached its dataset (opened or refreshed it), and the refreshes
    that failed: `/metrics` shows them (docs/deployment.md, when S3 is down)."""

    clock: Callable[[], float] = time.monotonic
    last_ok: float = field(default_factory=time.monotonic)
    failures: int = 0

    def age_s(self) -> float:
        return self.clock() - self.last_ok


async def refresh_forever(service: SearchService, every_s: float, freshness: Freshness | None = None) -> None:
    """Pick up what an ingest appends while the bot runs; a failed refresh is retried later."""
    freshness = freshness or Freshness()
    while True:
        await asyncio.sleep(every_s)
        try:
            if await service.refresh():
                log.info("dataset refreshed: %d rows", service.store.info.rows)
        except Exception:
            freshness.failures += 1
            log.exception("refreshing the dataset failed; keeping the rows already loaded")
        else:
            freshness.last_ok = freshness.clock()


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
