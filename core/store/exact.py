"""Exact cosine search in memory: a table of unit-length embeddings and texts, grown in place.

A `Table` holds rows [0, n) of a collection: the embeddings scaled to unit length (one float32
matrix), the texts (and their lowercased copies, for the filter words), sources, S3 keys and
image sizes. `Table.search` answers a `core.store.base.SearchRequest` with `unit @ q` and
`argpartition` (`top_indices`), after applying the `include` / `exclude` words as a boolean
mask (masks cached per word, the least recently used dropped beyond 64 words).

Snapshots. A table is immutable as far as its readers can tell: `extend_table` makes a new
table for more rows, writing only beyond the old table's `n` (into the same buffers while they
have room, else into copies 1.5 times larger) and into the same lists. A reader that
holds the old table keeps seeing exactly rows [0, n), so searches need no lock; a store swaps
the new table in with one assignment. Tables that extend one another must be made one at a
time (the store does so under its write lock).

This module imports no storage library.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.store.base import Hit, SearchRequest

log = logging.getLogger(__name__)

_MASK_CACHE_WORDS = 64


def unit_rows(matrix: Any) -> np.ndarray:
    """Rows scaled to unit length as a new float32 array; unusable rows (NaN, zero) become 0."""
    m = np.array(matrix, dtype=np.float32)
    bad = ~np.isfinite(m).all(axis=1)
    if bad.any():
        log.warning("%d stored embeddings hold NaN or infinity; they will never match", bad.sum())
        m[bad] = 0.0
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    m /= norms
    return m


def top_indices(scores: np.ndarray, want: int) -> np.ndarray:
    """Indices of the `want` highest scores, best first (equal scores: lower index first)."""
    if want <= 0 or len(scores) == 0:
        return np.empty(0, dtype=np.int64)
    if want < len(scores):
        part = np.argpartition(-scores, want - 1)[:want]
    else:
        part = np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]


def _grown(buf: np.ndarray, used: int, extra: np.ndarray) -> np.ndarray:
    """`buf` with `extra` written after its first `used` rows, reallocated (x1.5) when full.

    Rows before `used` are never written: views of them held by readers stay valid.
    """
    need = used + len(extra)
    if need > len(buf):
        bigger = np.empty((max(need, len(buf) * 3 // 2 + 16), *buf.shape[1:]), dtype=buf.dtype)
        bigger[:used] = buf[:used]
        buf = bigger
    buf[used:need] = extra
    return buf


def _frozen(view: np.ndarray) -> np.ndarray:
    view = view.view()
    view.flags.writeable = False
    return view


class _MaskCache:
    """Per-word boolean masks over a table's lowercased texts, least recently used dropped."""

    def __init__(self, words: OrderedDict[str, np.ndarray] | None = None) -> None:
        self._lock = threading.Lock()
        self._masks: OrderedDict[str, np.ndarray] = words or OrderedDict()

    def word(self, word: str, lowered: list[str], n: int) -> np.ndarray:
        with self._lock:
            mask = self._masks.get(word)
            if mask is not None:
                self._masks.move_to_end(word)
                return mask
        mask = np.fromiter((word in lowered[i] for i in range(n)), dtype=bool, count=n)
        with self._lock:
            self._masks[word] = mask
            while len(self._masks) > _MASK_CACHE_WORDS:
                self._masks.popitem(last=False)
        return mask

    def extended(self, lowered: list[str], start: int, stop: int) -> _MaskCache:
        """A cache for rows [0, stop) that keeps this one's words, computed on the new rows."""
        with self._lock:
            old = list(self._masks.items())
        tail = range(start, stop)
        new = OrderedDict(
            (w, np.concatenate([m, np.fromiter((w in lowered[i] for i in tail), bool)]))
            for w, m in old
        )
        return _MaskCache(new)


@dataclass(frozen=True)
class Table:
    """What exact search reads, rows [0, n). Lists and buffers may grow past n, never change."""

    n: int
    unit: np.ndarray  # [n, dim] float32 read-only view of `unit_buf`, unit-length rows
    unit_buf: np.ndarray
    texts: list[str]
    lowered: list[str]
    sources: list[str]
    s3_keys: list[str]
    sizes: np.ndarray  # [n, 2] int32 (width, height), read-only view of `sizes_buf`
    sizes_buf: np.ndarray
    masks: _MaskCache

    def mask(self, include: tuple[str, ...], exclude: tuple[str, ...]) -> np.ndarray | None:
        if not include and not exclude:
            return None
        mask = np.ones(self.n, dtype=bool)
        for w in include:
            mask &= self.masks.word(w, self.lowered, self.n)
        for w in exclude:
            mask &= ~self.masks.word(w, self.lowered, self.n)
        return mask

    def hit(self, row: int, score: float, ids: list[str]) -> Hit:
        width, height = self.sizes[row]
        return Hit(
            id=ids[row],
            score=score,
            text=self.texts[row],
            source=self.sources[row],
            s3_key=self.s3_keys[row],
            width=int(width),
            height=int(height),
            row=row,
        )

    def search(self, request: SearchRequest, ids: list[str]) -> list[Hit]:
        """The hits for `request`, best first; `ids[row]` is the id of each row."""
        q, k, offset = request.q, request.k, request.offset
        mask = self.mask(request.include, request.exclude)
        if mask is None:
            rows = None
            scores = self.unit @ q
        else:
            rows = np.flatnonzero(mask)
            # Gathering rows costs about as much as multiplying them: gather only when few pass.
            scores = self.unit[rows] @ q if len(rows) * 2 < self.n else (self.unit @ q)[rows]
        top = top_indices(scores, offset + k)[offset:]
        picked = top if rows is None else rows[top]
        return [
            self.hit(int(row), float(scores[i]), ids) for row, i in zip(picked, top, strict=True)
        ]


def extend_table(
    base: Table | None,
    unit: np.ndarray,
    texts: list[str],
    sources: list[str],
    s3_keys: list[str],
    sizes: np.ndarray,
) -> Table:
    """`base` (None: an empty table) followed by new rows, as a new table; `base` is unchanged.

    `unit`: the new rows' embeddings, already unit length (`unit_rows`), float32 [m, dim];
    `sizes`: int32 [m, 2] (width, height). A table made from no base takes ownership of the
    arrays and lists given; one made from a base copies the new rows into the base's buffers.
    """
    lowered = [t.lower() for t in texts]
    if base is None:
        start = 0
        unit_buf, sizes_buf, masks = unit, sizes, _MaskCache()
        lists = (texts, lowered, sources, s3_keys)
    else:
        start = base.n
        unit_buf = _grown(base.unit_buf, start, unit)
        sizes_buf = _grown(base.sizes_buf, start, sizes)
        lists = (base.texts, base.lowered, base.sources, base.s3_keys)
        for lst, new in zip(lists, (texts, lowered, sources, s3_keys), strict=True):
            del lst[start:]
            lst.extend(new)
        masks = base.masks.extended(base.lowered, start, start + len(unit))
    rows = start + len(unit)
    return Table(
        n=rows,
        unit=_frozen(unit_buf[:rows]),
        unit_buf=unit_buf,
        texts=lists[0],
        lowered=lists[1],
        sources=lists[2],
        s3_keys=lists[3],
        sizes=_frozen(sizes_buf[:rows]),
        sizes_buf=sizes_buf,
        masks=masks,
    )
