"""SearchService: the async API that the CLI and the chat adapters call.

query -> each term embedded (the worker batches them; text terms are cached) -> fused vector ->
store search (in a thread) -> hits with scores, URLs and timings.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from core.config import SearchSettings
from core.errors import BadInputError
from core.fusion import fuse
from core.query import Query, Term
from core.store import Hit, VectorStore
from core.urls import ImageLocator
from core.worker import EncoderWorker


@dataclass(frozen=True)
class ResultItem:
    """One image of a reply."""

    id: str
    score: float
    text: str
    url: str | None
    row: int
    width: int
    height: int


@dataclass(frozen=True)
class SearchResult:
    query: Query
    items: list[ResultItem]
    best_score: float | None  # before the score cut-off, to tell "no good match" from "no rows"
    timings_ms: dict[str, float] = field(default_factory=dict)


class _LRU:
    """A small least-recently-used map (instance state; no globals)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, key: str) -> np.ndarray | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: np.ndarray) -> None:
        if self.capacity <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


class SearchService:
    def __init__(
        self,
        worker: EncoderWorker,
        store: VectorStore,
        settings: SearchSettings,
        *,
        locator: ImageLocator | None = None,
        text_cache_size: int = 1024,
    ):
        self.worker = worker
        self.store = store
        self.settings = settings
        self.locator = locator or ImageLocator()
        self._text_cache = _LRU(text_cache_size)

    async def embed_term(self, term: Term) -> np.ndarray:
        if term.modality == "item":
            return await asyncio.to_thread(self._stored_embedding, str(term.payload))
        if term.modality == "text":
            cached = self._text_cache.get(str(term.payload))
            if cached is not None:
                return cached
        vector = await self.worker.embed(term.modality, term.payload)
        if term.modality == "text":
            self._text_cache.put(str(term.payload), vector)
        return vector

    def _stored_embedding(self, item_id: str) -> np.ndarray:
        try:
            return self.store.embedding(item_id)
        except KeyError:
            raise BadInputError(f"no image with id {item_id!r} in the collection") from None

    async def query_vector(self, query: Query) -> np.ndarray:
        vectors = await asyncio.gather(*(self.embed_term(t) for t in query.terms))
        return fuse(vectors, [t.weight for t in query.terms])

    async def search(self, query: Query) -> SearchResult:
        start = time.perf_counter()
        vector = await self.query_vector(query)
        encoded = time.perf_counter()
        limit = min(query.limit, self.settings.max_limit)
        hits: list[Hit] = await asyncio.to_thread(
            self.store.search,
            vector,
            limit,
            include=query.include,
            exclude=query.exclude,
            offset=query.offset,
        )
        searched = time.perf_counter()
        items = [self._item(h) for h in hits if h.score >= self.settings.min_score]
        return SearchResult(
            query=query,
            items=items,
            best_score=hits[0].score if hits else None,
            timings_ms={
                "encode": (encoded - start) * 1000,
                "search": (searched - encoded) * 1000,
                "total": (searched - start) * 1000,
            },
        )

    def _item(self, hit: Hit) -> ResultItem:
        return ResultItem(
            id=hit.id,
            score=hit.score,
            text=hit.text,
            url=self.locator.url_for(hit),
            row=hit.row,
            width=hit.width,
            height=hit.height,
        )

    async def image_bytes(self, item: ResultItem) -> bytes | None:
        """The JPEG kept in the dataset for a result (None when images live elsewhere)."""
        return await asyncio.to_thread(self.store.image_bytes, item.row)
