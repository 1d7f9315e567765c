"""The faiss structure of the index: an inverted file (IVF) of 8-bit scalar-quantised vectors.

Vectors are unit length, so inner product is cosine. Each vector is filed under its nearest
of `nlist` centroids (k-means on a sample); a search scans the `nprobe` lists whose centroids
are nearest the query, comparing the query with 8-bit codes (1 byte per dimension: 1 GiB at
1M rows of 1024-d). The store re-ranks the candidates exactly, so the codes only have to put
the true neighbours among them.

Filters run during the scan (`faiss.IDSelectorBitmap`): a list entry that fails the filter is
never a candidate, so a broad filter does not shorten a page. The ids given to faiss are the
index's slots (see `core.store.ann.index`).
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

TRAIN_PER_LIST = 40  # training vectors per centroid (faiss warns below 39)
KMEANS_ITERATIONS = 10


def list_count(rows: int) -> int:
    """Centroids for `rows` vectors: about sqrt(rows) (lists of about sqrt(rows) vectors), at
    least 1, and never more than the rows can train."""
    return max(1, min(int(math.sqrt(rows)), rows // TRAIN_PER_LIST))


def trained(sample: np.ndarray, nlist: int, threads: int) -> faiss.Index:
    """An empty IVF index whose centroids and quantiser ranges are learnt from `sample`
    (float32 unit rows)."""
    faiss.omp_set_num_threads(threads)
    dim = sample.shape[1]
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.seed = 1234
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def add(index: faiss.Index, vectors: np.ndarray, slots: np.ndarray) -> None:
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), slots.astype(np.int64))


def remove(index: faiss.Index, slots: np.ndarray) -> int:
    if not len(slots):
        return 0
    return int(index.remove_ids(faiss.IDSelectorBatch(slots.astype(np.int64))))


def search(
    index: faiss.Index, q: np.ndarray, count: int, nprobe: int, allowed: np.ndarray | None = None
) -> np.ndarray:
    """Up to `count` slots whose codes score best against `q` in the `nprobe` nearest lists,
    only among `allowed` (a boolean array over slots) when given."""
    params = faiss.SearchParametersIVF(nprobe=min(nprobe, index.nlist))
    if allowed is not None:
        bits = np.packbits(allowed, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
        params.sel = selector
    _, found = index.search(q.reshape(1, -1).astype(np.float32, copy=False), count, params=params)
    found = found[0]
    return found[found >= 0]


def save(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))


def load(path: Path, *, mapped: bool) -> faiss.Index:
    """The index in `path`; `mapped`: its lists memory-mapped read-only (a searching process),
    else read into memory (a writer, which adds and removes)."""
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP if mapped else 0)
