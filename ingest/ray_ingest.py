"""Ingest on a Ray cluster with Ray Data: `search-all ingest SOURCE --ray auto|ADDRESS`.

The work that scales out runs on the cluster as one Ray Data stream; what must happen once
stays in this process, the driver, exactly as in the single-process pipeline:

    driver: writer lock, listing, ids already in the dataset dropped (`pipeline.plan_ingest`)
      │  the items to index (`ray.data.from_items`)
      ▼
    decode: CPU tasks, a batch each: read, decode, preprocess (`loader.prepare_item`)
      ▼
    encode: a pool of actors, each holding the model (`core.encoder.Encoder`); one GPU
      │     per actor and fp16 when the cluster has GPUs
      ▼
    driver: the one writer: each batch appended and committed as it arrives
            (`pipeline.write_records`); images uploaded to S3 first when configured

DeepLake serialises no writers, so only the driver writes, to a local or `s3://` dataset.

Guarantees, the same as `ingest.pipeline`'s:
- Ids already in the dataset are dropped before anything is scheduled.
- A killed driver loses only the batches in flight (decoded or encoded, not committed); Ray
  ends the job's tasks and actors with it, and the re-run skips what was committed.
- A worker that dies is replaced: a decode task is retried (`TASK_RETRIES`), an encoder actor
  restarted and its batch retried (`ACTOR_RESTARTS`). A batch Ray delivers twice is written
  once: the driver keeps the ids it wrote in this run. Every id ends up in the dataset once.

This module is imported only for `--ray`; without it Ray is never imported.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from tqdm import tqdm

from core.config import MediaLimits, ModelSettings
from core.encoder import Encoder
from core.errors import ConfigError
from core.imagebind.transforms import IMAGE_SIZE
from core.store.base import VectorStore
from ingest.loader import prepare_item
from ingest.pipeline import (
    IngestSummary,
    make_records,
    note_failures,
    plan_ingest,
    write_records,
)
from ingest.sources.base import ItemRef, Source
from ingest.uploader import ImageUploader

log = logging.getLogger(__name__)

TASK_RETRIES = 3  # a decode task whose worker died is run again up to this many times
ACTOR_RESTARTS = 3  # an encoder actor that died is restarted (and its batch retried) this often
Columns = dict[str, np.ndarray]


@dataclass(frozen=True)
class EncoderLoader:
    """Builds the encoder inside an actor: `[model]` as configured (on a GPU actor, device
    `auto` is that GPU and dtype `auto` fp16); a CPU actor computes with every core of its
    node unless `[model] threads` says otherwise."""

    model: ModelSettings
    limits: MediaLimits

    def __call__(self) -> Encoder:
        if not self.model.threads and not torch.cuda.is_available():
            torch.set_num_threads(os.cpu_count() or 1)  # Ray gives an actor its CPUs (1) as threads
        return Encoder.load(self.model, self.limits, progress=False)


@dataclass(frozen=True)
class RayOptions:
    """Where and how: `address` "auto" (RAY_ADDRESS, or the cluster `ray start` runs on this
    machine, else a new Ray on this machine, on loopback) or a cluster's address; `actors`:
    encoder actors (default: one per GPU, or one per node on a cluster without GPUs)."""

    address: str = "auto"
    actors: int | None = None
    decode_cpus: float = 1.0  # CPUs each decode task takes
    encoder: Callable[[], Encoder] | None = None  # default: `EncoderLoader` of the settings
    gpus: bool | None = None  # default: when the cluster has GPUs and [model] device is not cpu


@contextmanager
def ray_session(address: str) -> Iterator[None]:
    """Connect to Ray for the block (a Ray this process already joined is used as it is)."""
    if ray.is_initialized():
        yield
        return
    try:
        if address == "auto":
            try:
                ray.init(address="auto")
            except ConnectionError:
                log.info("no Ray cluster found: starting one on this machine (loopback only)")
                ray.init(include_dashboard=False, _node_ip_address="127.0.0.1")
        else:
            ray.init(address=address)
    except ConnectionError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r}: {exc}") from exc
    try:
        yield
    finally:
        ray.shutdown()


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


@functools.lru_cache(maxsize=4)
def _opened(pickled_source: bytes) -> Source:
    """The source, unpickled once per worker process rather than once per task: what it opens
    (an S3 client, a Hugging Face table) is opened once per process, as the local loader does."""
    return pickle.loads(pickled_source)


def decode_batch(batch: Columns, pickled_source: bytes, limits: MediaLimits) -> Columns:
    """A Ray Data task: read, decode and preprocess a batch of items, as the local loader does
    (`prepare_item`); an item that fails keeps its row, with the reason in `error`."""
    source = _opened(pickled_source)
    refs = [
        ItemRef(str(id_), str(text), _plain(locator), str(version))
        for id_, text, locator, version in zip(
            batch["id"], batch["text"], batch["locator"], batch["version"], strict=True
        )
    ]
    items = [prepare_item(source, ref, limits) for ref in refs]
    blank = np.zeros((3, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    return {
        "id": np.array([ref.id for ref in refs], dtype=object),
        "text": np.array([ref.text for ref in refs], dtype=object),
        "pixels": np.stack([blank if item.pixels is None else item.pixels.numpy() for item in items]),
        "jpeg": np.array([item.jpeg for item in items], dtype=object),
        "width": np.array([item.width for item in items], dtype=np.int64),
        "height": np.array([item.height for item in items], dtype=np.int64),
        "hash": np.array([item.hash for item in items], dtype=object),
        "error": np.array([item.error for item in items], dtype=object),
    }


class EncodeBatches:
    """A Ray Data actor: holds the model and embeds each batch's good items; the pixels stay
    here (only the embeddings travel on to the driver)."""

    def __init__(self, load: Callable[[], Encoder]) -> None:
        self.encoder = load()

    def __call__(self, batch: Columns) -> Columns:
        good = np.array([not error for error in batch["error"]], dtype=bool)
        vectors = np.zeros((len(good), self.encoder.dim), np.float32)
        if good.any():
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][good]))
            vectors[good] = self.encoder.forward("image", pixels)
        out = {name: column for name, column in batch.items() if name != "pixels"}
        out["embedding"] = vectors
        return out


def _gpus_wanted(options: RayOptions, model: ModelSettings) -> int:
    available = int(ray.cluster_resources().get("GPU", 0))
    if options.gpus is False or model.device == "cpu":
        return 0
    if options.gpus and not available:
        raise ConfigError("GPUs were asked for, but the Ray cluster has none")
    return available


def _alive_nodes() -> int:
    return max(1, sum(1 for node in ray.nodes() if node.get("Alive")))


def embedded_rows(
    refs: list[ItemRef],
    source: Source,
    *,
    model: ModelSettings,
    limits: MediaLimits,
    batch_size: int,
    options: RayOptions,
) -> Iterator[Columns]:
    """The Ray Data stream (see the module docstring): batches of up to `batch_size` rows with
    their embedding, or their `error`, as the cluster finishes them."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows its own, in images
    gpus = _gpus_wanted(options, model)
    actors = options.actors or gpus or _alive_nodes()
    # Without GPUs for it, an actor computes on its CPUs even on a node that has a GPU.
    load = options.encoder or EncoderLoader(model if gpus else model.model_copy(update={"device": "cpu"}), limits)
    log.info("Ray: %d encoder actor(s)%s", actors, ", one GPU each" if gpus else " on CPUs")
    items = ray.data.from_items(
        [{"id": r.id, "text": r.text, "locator": r.locator, "version": r.version} for r in refs]
    )
    with warnings.catch_warnings():
        # Bounded retries have no named parameter yet (the extra pins ray below 2.64, which
        # drops these arguments); Ray Data's own default retries a dead worker forever.
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        decoded = items.map_batches(
            decode_batch,
            batch_size=batch_size,
            batch_format="numpy",
            fn_kwargs={"pickled_source": pickle.dumps(source), "limits": limits},
            num_cpus=options.decode_cpus,
            max_retries=TASK_RETRIES,  # also keeps decode out of the actors (no operator fusion)
        )
        encoded = decoded.map_batches(
            EncodeBatches,
            batch_size=batch_size,
            batch_format="numpy",
            fn_constructor_args=(load,),
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1,
            num_gpus=1 if gpus else 0,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=ACTOR_RESTARTS,
            **({} if gpus else {"scheduling_strategy": "SPREAD"}),  # CPU actors: one per node
        )
    yield from encoded.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=1)


def ray_ingest(
    source: Source,
    *,
    store: VectorStore,
    model: ModelSettings,
    limits: MediaLimits,
    batch_size: int = 16,
    uploader: ImageUploader | None = None,
    keep_jpeg: bool = True,
    progress: bool = True,
    sync: bool = False,
    options: RayOptions | None = None,
) -> IngestSummary:
    """`ingest.pipeline.ingest` with decoding and encoding on a Ray cluster (module docstring)."""
    options = options or RayOptions()
    start = time.perf_counter()
    todo, summary = plan_ingest(source, store, limits=limits, batch_size=batch_size, uploader=uploader, sync=sync)
    if not todo:
        summary.seconds = time.perf_counter() - start
        return summary
    written: set[str] = set()
    with ray_session(options.address), tqdm(
        total=len(todo), unit="img", disable=not progress, desc="ingest (Ray)", smoothing=0.1
    ) as bar:
        rows = embedded_rows(todo, source, model=model, limits=limits, batch_size=batch_size, options=options)
        for batch in rows:
            fresh = [i for i, id_ in enumerate(batch["id"]) if str(id_) not in written]
            if len(fresh) < len(batch["id"]):
                log.warning("Ray delivered %d row(s) again: written once", len(batch["id"]) - len(fresh))
            _write_batch(batch, fresh, store, summary, source.name, uploader, keep_jpeg, sync)
            written.update(str(batch["id"][i]) for i in fresh)
            bar.update(len(fresh))
            if summary.failed:
                bar.set_postfix(failed=summary.failed, refresh=False)
    summary.seconds = time.perf_counter() - start
    return summary


def _write_batch(
    batch: Columns,
    rows: list[int],
    store: VectorStore,
    summary: IngestSummary,
    source_name: str,
    uploader: ImageUploader | None,
    keep_jpeg: bool,
    sync: bool,
) -> None:
    """Append and commit the `rows` of one batch from the cluster; failures are counted."""
    good = [i for i in rows if not batch["error"][i]]
    note_failures(
        summary, [(ItemRef(str(batch["id"][i])), str(batch["error"][i])) for i in rows if batch["error"][i]]
    )
    if not good:
        return
    refs = [ItemRef(str(batch["id"][i]), str(batch["text"][i])) for i in good]
    jpegs = [bytes(batch["jpeg"][i]) for i in good]
    keys = uploader.upload(jpegs) if uploader else [""] * len(good)
    sizes = [(int(batch["width"][i]), int(batch["height"][i])) for i in good]
    records = make_records(refs, batch["embedding"][good], jpegs, keys, sizes, source_name, keep_jpeg)
    write_records(store, records, [str(batch["hash"][i]) for i in good], summary, sync=sync)
