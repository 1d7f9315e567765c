"""An index lined up with one version of the dataset, and the search that uses it.

`IndexView` maps the index's slots to the dataset's current rows (through the ids) and holds
the rows appended since the index was saved (the tail), which are searched exactly.

`search` answers a `SearchRequest`:

- no filter: the index gives `rerank` candidates, the tail adds its own best rows, and all of
  them are re-ranked with their exact float32 vectors;
- a selective filter (at most `SELECTIVE_ROWS` rows pass): the rows that pass are searched
  exactly, from the memory-mapped vectors: the same answer as the exact search;
- a broader filter: the index scans with the filter applied to each list entry (so every
  candidate passes, and the lists scanned widen until the page is full), then re-ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.store.ann.index import AnnIndex
from core.store.base import Hit, SearchRequest
from core.store.exact import Table, top_indices

SELECTIVE_ROWS = 2048


@dataclass(frozen=True)
class IndexView:
    index: AnnIndex
    version: str  # the dataset version and row count this view is for
    rows: int
    slot_row: np.ndarray  # int64 [slots]: the current row of each slot, -1 for tombstones
    row_slot: np.ndarray  # int64 [index.rows]: the slot of each row the index covers
    tail: np.ndarray  # float32 [rows - index.rows, dim]: rows appended since, unit length
    identity: bool  # slot == row for every row the index covers (no row removed since a build)

    @classmethod
    def line_up(
        cls, index: AnnIndex, version: str, rows: int, row_of: dict[str, int], tail: np.ndarray
    ) -> IndexView:
        """`index` (covering rows [0, index.rows) of the dataset, maybe with rows removed
        before) against the dataset now at `version` with `rows` rows."""
        slot_row = np.full(index.slots, -1, dtype=np.int64)
        live = np.flatnonzero(index.live)
        ids = index.ids
        slot_row[live] = [row_of.get(ids[s], -1) for s in live]
        row_slot = np.full(index.rows, -1, dtype=np.int64)
        mapped = slot_row >= 0
        covered = slot_row[mapped]
        inside = covered < index.rows
        row_slot[covered[inside]] = np.flatnonzero(mapped)[inside]
        identity = index.slots == index.rows and bool(np.array_equal(row_slot, np.arange(index.rows)))
        return cls(index, version, rows, slot_row, row_slot, tail, identity)

    def extended(self, version: str, rows: int, more: np.ndarray) -> IndexView:
        """The same index with `more` rows appended (to the tail)."""
        tail = np.concatenate([self.tail, more]) if len(more) else self.tail
        return IndexView(self.index, version, rows, self.slot_row, self.row_slot, tail, self.identity)

    def vectors_of_rows(self, rows: np.ndarray) -> np.ndarray:
        covered = self.index.rows
        out = np.empty((len(rows), self.index.dim), dtype=np.float32)
        inside = rows < covered
        out[inside] = self.index.vectors(self.row_slot[rows[inside]])
        out[~inside] = self.tail[rows[~inside] - covered]
        return out


def search(view: IndexView, table: Table, request: SearchRequest, ids: list[str], rerank: int) -> list[Hit]:
    """The hits for `request` (see the module docstring); `ids[row]` is each row's id."""
    q, want = request.q, request.offset + request.k
    covered = view.index.rows
    mask = table.mask(request.include, request.exclude)
    if mask is not None:
        passing = np.flatnonzero(mask)
        if len(passing) <= max(SELECTIVE_ROWS, want):
            return _hits(table, ids, passing, view.vectors_of_rows(passing) @ q, request)
    allowed = None
    if mask is not None and view.identity:
        allowed = mask[:covered]  # slots are rows: the mask is the filter
    elif mask is not None:
        allowed = np.zeros(view.index.slots, dtype=bool)
        inside = view.row_slot[: min(covered, len(mask))]
        ok = mask[: len(inside)] & (inside >= 0)
        allowed[inside[ok]] = True
    slots = view.index.candidates(q, max(rerank, 2 * want), allowed)
    rows = view.slot_row[slots]
    slots = slots[rows >= 0]
    rows = rows[rows >= 0]
    candidates = [rows]
    vectors = [view.index.vectors(slots)]
    if len(view.tail):
        tail_rows = np.arange(covered, covered + len(view.tail))
        tail_vectors = view.tail
        if mask is not None:
            keep = mask[tail_rows]
            tail_rows, tail_vectors = tail_rows[keep], tail_vectors[keep]
        best = top_indices(tail_vectors @ q, max(rerank, want))
        candidates.append(tail_rows[best])
        vectors.append(tail_vectors[best])
    rows = np.concatenate(candidates)
    return _hits(table, ids, rows, np.concatenate(vectors) @ q, request)


def _hits(table: Table, ids: list[str], rows: np.ndarray, scores: np.ndarray, request: SearchRequest) -> list[Hit]:
    """Order `rows` by their exact `scores` (equal scores: lower row first) and page them."""
    order = np.lexsort((rows, -scores))[request.offset : request.offset + request.k]
    return [table.hit(int(rows[i]), float(scores[i]), ids) for i in order]
