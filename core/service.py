"""SearchService: the async API that the CLI, the web page and the chat adapters call.

query -> audio read as speech or sound (`AudioReader`) -> each term embedded (the worker batches
them; text terms are cached) -> fused vector -> remembered under a page key (for "Next page"
buttons) -> store search over more candidates than the page (in a thread) -> near-duplicates
folded -> score cut-off -> result items with scores, URLs and timings.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from core.config import ScoreCutoffs, SearchSettings
from core.errors import BadInputError, NoPromptTextError
from core.fusion import fuse
from core.media.image import served_jpeg
from core.memory.memory import ChannelMemory
from core.memory.model import COLLECTION, MemoryHit, MemoryMeta, SearchScope
from core.memory.store import MemoryStore
from core.metrics import Metrics, modality_mix
from core.page_memory import PageMemory, SavedQuery
from core.query import AudioAs, Query, Term
from core.ranking import Group, fold_near_duplicates, query_cutoff
from core.s3.locator import ImageLocator
from core.store.base import Hit, VectorStore
from core.worker import EncoderWorker

# Candidates read at most to fill one page after folding near-duplicates.
MAX_CANDIDATES = 4096
# How deep results go: no page starts at or shows a result ranked past this. A page at offset N
# folds the best (N + limit + 1) x candidate_factor hits; without a cap, a "Next page" button
# with a hand-made offset of 19,990 made the service fold a whole 20k collection (issue 17).
MAX_DEPTH = 500


@dataclass(frozen=True)
class ResultItem:
    """One image of a reply; `similar` near-duplicates were folded into it."""

    id: str
    score: float
    text: str
    url: str | None
    row: int
    width: int
    height: int
    similar: int = 0
    memory: MemoryMeta | None = None  # where a channel-memory image was posted (row is then -1)


@dataclass(frozen=True)
class SearchResult:
    """One page of results.

    best_score: the best score on this page before the cut-off, to tell "no good match" (rows
    exist but none pass `cutoff`) from an empty collection or filter (None).
    page_key: pass it with another offset to `SearchService.page` ("Next page").
    heard: the words recognised in voice input and searched as text ("" when none).
    at_depth_limit: the search has more, but not past `MAX_DEPTH` (this page ends there, or its
    offset is past it): no next page; refine the search instead.
    notes: what a front end tells about how it read the request, shown with the results (a
    page that holds fewer than were asked for: `bot.common.handle.PageSize`); the core adds none.
    """

    description: str
    items: list[ResultItem]
    best_score: float | None
    cutoff: float
    offset: int
    limit: int
    has_more: bool
    page_key: str
    heard: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    at_depth_limit: bool = False
    notes: tuple[str, ...] = ()

    @property
    def no_good_match(self) -> bool:
        return not self.items and self.best_score is not None

    @property
    def next_offset(self) -> int | None:
        return self.offset + self.limit if self.has_more else None


class AudioReader(Protocol):
    """Turns an audio term into the terms to search (speech as text, or the sound itself)."""

    async def expand(self, term: Term, audio_as: AudioAs) -> tuple[list[Term], str]:
        """The terms to search for `term`, and the transcript used ("" when none)."""
        ...


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
        cutoffs: ScoreCutoffs | None = None,
        pages: PageMemory | None = None,
        audio: AudioReader | None = None,
        metrics: Metrics | None = None,
        memory: ChannelMemory | None = None,
    ):
        """`cutoffs=None` applies only `settings.min_score` (for models whose scores mean
        nothing, like `tiny`); `pages=None` remembers pages in memory; `audio=None` searches
        audio as sound only. `memory`: channel memory, searched when a `SearchScope` asks."""
        self.worker = worker
        self.store = store
        self.settings = settings
        self.locator = locator or ImageLocator()
        self.cutoffs = cutoffs
        self.pages = pages or PageMemory(None)
        self.audio = audio
        self.metrics = metrics or Metrics()
        self._text_cache = _LRU(text_cache_size)
        # Channel memory: what the front ends call (`channel_memory`), and its store (searched).
        self.channel_memory = memory
        self.memory: MemoryStore | None = None if memory is None else memory.store

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

    async def read_terms(self, query: Query) -> tuple[list[Term], str]:
        """The query's terms with audio read as speech or sound; and what was heard."""
        terms: list[Term] = []
        heard: list[str] = []
        for term in query.terms:
            if term.modality == "audio" and self.audio is not None and query.audio_as != "sound":
                expanded, transcript = await self.audio.expand(term, query.audio_as)
                terms += expanded
                if transcript:
                    heard.append(transcript)
            else:
                terms.append(term)
        return terms, " / ".join(heard)

    async def query_vector(self, query: Query) -> np.ndarray:
        terms, _ = await self.read_terms(query)
        return await self._fuse(terms)

    async def _fuse(self, terms: list[Term]) -> np.ndarray:
        vectors = await asyncio.gather(*(self.embed_term(t) for t in terms))
        return fuse(vectors, [t.weight for t in terms])

    async def search(self, query: Query, scope: SearchScope = COLLECTION) -> SearchResult:
        """`scope`: the shared collection (default), a tenant's channel memory, or both; memory
        is filtered to `scope.channels` before the top-k."""
        self._check_scope(scope)
        with self._measured("search", modality_mix(query.terms)) as record:
            return record(await self._search(query, scope))

    async def page(self, page_key: str, offset: int, channels: frozenset[str] | None = None) -> SearchResult:
        """Another page of a remembered search (`SearchResult.page_key`); no re-encoding.
        `channels`: what the person asking for it may read now (a search of memory is limited
        to those too; None: no further limit, as for the operator)."""
        with self._measured("page", "remembered") as record:
            return record(await self._page_of(page_key, offset, channels))

    async def more_like_memory(self, scope: SearchScope, item_id: str, limit: int | None = None) -> SearchResult:
        """Images like the remembered image `item_id` of `scope.tenant`, within `scope` (the
        image itself must be in a channel of the scope, else it is "not found")."""
        self._check_scope(scope)
        if self.memory is None or scope.tenant is None:
            raise BadInputError("no channel memory here")
        start = time.perf_counter()
        try:
            vector, meta = await asyncio.to_thread(self.memory.embedding, scope.tenant, item_id)
        except KeyError:
            vector, meta = None, None
        if meta is None or (scope.channels is not None and meta.channel not in scope.channels):
            raise BadInputError("that image is no longer remembered (or not in a channel you can read)")
        saved = SavedQuery(
            vector=vector,
            include=(),
            exclude=(),
            limit=min(limit or self.settings.default_limit, self.settings.max_limit),
            description="more like a remembered image",
            heard="",
            cutoff=query_cutoff([Term("item", "", 1.0)], self.cutoffs, self.settings.min_score),
            scope=scope,
        )
        return await self._page(saved, 0, start)

    def _check_scope(self, scope: SearchScope) -> None:
        if scope.uses_memory and self.memory is None:
            raise BadInputError("channel memory is not enabled on this bot")

    async def more_like_row(self, row: int, limit: int | None = None, *, rank: int | None = None) -> SearchResult:
        """Images like the one stored at `row`, from its stored embedding (no re-encoding);
        `rank` is where the user saw it in their results (1-based, across pages), to name it
        as they saw it: "more like #12 (sunset.jpg)"."""
        with self._measured("more_like_this", "item") as record:
            return record(await self._more_like_row(row, limit, rank))

    async def refresh(self) -> bool:
        """Pick up rows committed to the dataset since it was opened (by an ingest)."""
        return await asyncio.to_thread(self.store.refresh)

    @contextmanager
    def _measured(self, kind: str, modalities: str) -> Iterator[Callable[[SearchResult], SearchResult]]:
        def record(result: SearchResult) -> SearchResult:
            self.metrics.record(kind, modalities, result.timings_ms)
            return result

        try:
            yield record
        except Exception as exc:
            self.metrics.failed(exc)
            raise

    async def _search(self, query: Query, scope: SearchScope = COLLECTION) -> SearchResult:
        start = time.perf_counter()
        terms, heard = await self.read_terms(query)
        vector = await self._fuse(terms)
        saved = SavedQuery(
            vector=vector,
            include=query.include,
            exclude=query.exclude,
            limit=min(query.limit, self.settings.max_limit),
            description=query.describe(),
            heard=heard,
            cutoff=query_cutoff(terms, self.cutoffs, self.settings.min_score),
            scope=scope,
        )
        return await self._page(saved, query.offset, start)

    async def _page_of(self, page_key: str, offset: int, channels: frozenset[str] | None = None) -> SearchResult:
        start = time.perf_counter()
        saved = await asyncio.to_thread(self.pages.load, page_key)
        if channels is not None and saved.scope.uses_memory:
            saved = dataclasses.replace(saved, scope=saved.scope.narrowed(channels))
        self._check_scope(saved.scope)
        return await self._page(saved, max(0, offset), start, key=page_key)

    async def _more_like_row(self, row: int, limit: int | None, rank: int | None) -> SearchResult:
        start = time.perf_counter()
        vectors = await asyncio.to_thread(self.store.embeddings_at, [row])
        name = await asyncio.to_thread(self.store.id_at, row) or f"the image at row {row}"
        saved = SavedQuery(
            vector=vectors[0],
            include=(),
            exclude=(),
            limit=min(limit or self.settings.default_limit, self.settings.max_limit),
            # The clicked image by its rank and name; a row number alone read like a rank.
            description=f"more like #{rank} ({name})" if rank else f"more like {name}",
            heard="",
            cutoff=query_cutoff([Term("item", "", 1.0)], self.cutoffs, self.settings.min_score),
        )
        return await self._page(saved, 0, start)

    async def _page(
        self, saved: SavedQuery, offset: int, start: float, key: str | None = None
    ) -> SearchResult:
        encoded = time.perf_counter()
        if key is None:
            key = await asyncio.to_thread(self.pages.save, saved)
        end = min(offset + saved.limit, MAX_DEPTH)
        # Past the cap: nothing is searched (the reply says how deep results go).
        groups = await asyncio.to_thread(self._groups, saved, end + 1) if offset < MAX_DEPTH else []
        searched = time.perf_counter()
        if not groups and saved.include and offset < MAX_DEPTH and not saved.scope.uses_memory:
            await self._check_filterable()
        page = groups[offset:end]
        shown = [g for g in page if g.hit.score >= saved.cutoff]
        more = len(groups) > end and len(shown) == len(page)
        return SearchResult(
            description=saved.description,
            items=[self._item(g) for g in shown],
            best_score=page[0].hit.score if page else None,
            cutoff=saved.cutoff,
            offset=offset,
            limit=saved.limit,
            has_more=more and end < MAX_DEPTH,
            page_key=key,
            heard=saved.heard,
            timings_ms={
                "encode": (encoded - start) * 1000,
                "search": (searched - encoded) * 1000,
                "total": (searched - start) * 1000,
            },
            at_depth_limit=offset >= MAX_DEPTH or (more and end >= MAX_DEPTH),
        )

    async def _check_filterable(self) -> None:
        """An empty filtered search of the collection alone (channel memory has the messages'
        text): say so when the collection has no text to filter on."""
        if not await asyncio.to_thread(self.store.has_text):
            raise NoPromptTextError()

    def _groups(self, saved: SavedQuery, want: int) -> list[Group]:
        """At least `want` groups of near-duplicates (fewer when the collection runs out)."""
        cosine = self.settings.collapse_cosine
        if saved.scope.uses_memory:
            return self._scoped_groups(saved, want, cosine)
        if cosine >= 1.0:
            hits = self.store.search(saved.vector, want, include=saved.include, exclude=saved.exclude)
            return [Group(h, 0) for h in hits]
        k = min(want * self.settings.candidate_factor, MAX_CANDIDATES)
        while True:
            hits = self.store.search(saved.vector, k, include=saved.include, exclude=saved.exclude)
            vectors = self.store.embeddings_at([h.row for h in hits])
            groups = fold_near_duplicates(hits, vectors, cosine)
            if len(groups) >= want or len(hits) < k or k >= MAX_CANDIDATES:
                return groups
            k = min(k * 4, MAX_CANDIDATES)

    def _candidates(self, saved: SavedQuery, k: int) -> tuple[list[Hit], np.ndarray, bool]:
        """The best `k` hits of the scope's sources merged by score, their embeddings, and
        whether any source may hold more."""
        scope = saved.scope
        hits: list[Hit] = []
        vectors: list[np.ndarray] = []
        more = False
        if scope.uses_collection:
            found = self.store.search(saved.vector, k, include=saved.include, exclude=saved.exclude)
            hits += found
            vectors.append(self.store.embeddings_at([h.row for h in found]))
            more |= len(found) == k
        if scope.uses_memory and self.memory is not None and scope.tenant is not None:
            remembered, unit = self.memory.search(
                scope.tenant, saved.vector, k, channels=scope.channels, include=saved.include, exclude=saved.exclude
            )
            hits += remembered
            vectors.append(unit)
            more |= len(remembered) == k
        matrix = np.concatenate(vectors) if vectors else np.empty((0, 0), np.float32)
        order = sorted(range(len(hits)), key=lambda i: -hits[i].score)[:k]
        return [hits[i] for i in order], matrix[order] if len(order) else matrix[:0], more

    def _scoped_groups(self, saved: SavedQuery, want: int, cosine: float) -> list[Group]:
        """`_groups` for a scope that includes channel memory (filtered before the top-k)."""
        k = want if cosine >= 1.0 else min(want * self.settings.candidate_factor, MAX_CANDIDATES)
        while True:
            hits, vectors, more = self._candidates(saved, k)
            if cosine >= 1.0:
                return [Group(h, 0) for h in hits]
            groups = fold_near_duplicates(hits, vectors, cosine)
            if len(groups) >= want or not more or k >= MAX_CANDIDATES:
                return groups
            k = min(k * 4, MAX_CANDIDATES)

    def _item(self, group: Group) -> ResultItem:
        hit = group.hit
        if isinstance(hit, MemoryHit):
            return ResultItem(
                id=hit.id, score=hit.score, text=hit.text, url=None, row=-1, width=hit.width,
                height=hit.height, similar=group.folded, memory=hit.meta,
            )
        return ResultItem(
            id=hit.id,
            score=hit.score,
            text=hit.text,
            url=self.locator.url_for(hit),
            row=hit.row,
            width=hit.width,
            height=hit.height,
            similar=group.folded,
        )

    async def image_bytes(self, item: ResultItem) -> bytes | None:
        """The JPEG kept in the dataset for a result (None when images live elsewhere); for a
        channel-memory result, its thumbnail."""
        if item.memory is not None:
            if self.memory is None:
                return None
            meta = item.memory
            return await asyncio.to_thread(self.memory.image, meta.tenant, item.id)
        return await self.stored_image(item.row)

    async def stored_image(self, row: int) -> bytes | None:
        """The JPEG kept in the dataset at `row`, without metadata; None when it keeps none."""

        def read() -> bytes | None:
            data = self.store.image_bytes(row)
            return served_jpeg(data) if data else data

        return await asyncio.to_thread(read)
