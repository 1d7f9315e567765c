"""Deep "Next page" (issue 17, item 4): offsets stop at `MAX_DEPTH`, the reply says so, and no
page folds more candidates than the capped depth needs, whatever offset a button id carries."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from bot.common.reply import NextPage, build_reply, decode_action, run_action
from core.config import SearchSettings
from core.page_memory import ExpiredPageError, PageMemory, SavedQuery
from core.query import Query, Term
from core.service import MAX_CANDIDATES, MAX_DEPTH, SearchService
from core.store.base import Hit


class CountingStore:
    """An exact in-memory store of `n` random rows that records how many hits each search asks."""

    def __init__(self, n: int, dim: int = 16, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.matrix = rng.standard_normal((n, dim)).astype(np.float32)
        self.matrix /= np.linalg.norm(self.matrix, axis=1, keepdims=True)
        self.asked: list[int] = []
        self.folded_rows = 0

    def search(self, vector: np.ndarray, k: int, include=(), exclude=()) -> list[Hit]:
        self.asked.append(k)
        scores = self.matrix @ vector
        order = np.argsort(-scores, kind="stable")[:k]
        return [Hit(f"r{r}", float(scores[r]), "", "", "", 1, 1, int(r)) for r in order]

    def embedding(self, item_id: str) -> np.ndarray:
        return self.matrix[int(item_id[1:])]

    def embeddings_at(self, rows: Sequence[int]) -> np.ndarray:
        self.folded_rows = max(self.folded_rows, len(rows))
        return self.matrix[list(rows)]

    def id_at(self, row: int) -> str | None:
        return f"r{row}" if 0 <= row < len(self.matrix) else None


@pytest.fixture
def deep():
    store = CountingStore(20_000)
    service = SearchService(None, store, SearchSettings(collapse_cosine=0.95), pages=PageMemory(None))  # type: ignore[arg-type]
    vector = store.matrix[0]
    key = service.pages.save(SavedQuery(vector, (), (), 10, "deep", "", -1.0))
    return service, store, key


async def test_an_offset_past_the_cap_is_answered_without_a_deep_search(deep):
    service, store, key = deep
    result = await run_action(service, decode_action(NextPage(key, 19_990).encode()))
    assert result.items == [] and not result.has_more and result.at_depth_limit
    assert "as deep as the results go" in build_reply(result).notice
    assert store.folded_rows <= MAX_CANDIDATES and all(k <= MAX_CANDIDATES for k in store.asked)
    with pytest.raises(ExpiredPageError):
        await service.page("0123456789abcdef0123", 999_999)  # an unknown key still says so


async def test_the_last_page_before_the_cap_is_shown_and_ends_the_paging(deep):
    service, store, key = deep
    before = await service.page(key, MAX_DEPTH - 20)
    assert len(before.items) == 10 and before.has_more and not before.at_depth_limit
    last = await service.page(key, before.next_offset)
    assert [i.id for i in last.items] and len(last.items) == 10 and last.offset + 10 == MAX_DEPTH
    assert last.at_depth_limit and last.next_offset is None and build_reply(last).next_page is None
    # A page straddling the cap shows what lies before it, no more.
    straddling = await service.page(key, MAX_DEPTH - 3)
    assert len(straddling.items) == 3 and straddling.at_depth_limit
    assert [i.id for i in straddling.items] == [i.id for i in last.items[-3:]]
    assert max(store.asked) <= (MAX_DEPTH + 1) * service.settings.candidate_factor
    assert store.folded_rows <= (MAX_DEPTH + 1) * service.settings.candidate_factor


async def test_a_fresh_search_with_a_deep_offset_is_capped_too(deep):
    service, store, _ = deep
    result = await service.search(Query((Term("item", "r1"),), limit=5, offset=10**6))  # CLI --offset
    assert result.items == [] and result.at_depth_limit and store.asked == []
    shallow = await service.search(Query((Term("item", "r1"),), limit=5, offset=5))
    assert len(shallow.items) == 5 and shallow.has_more
