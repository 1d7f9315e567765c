"""`AnnIndex`: the approximate index of a collection, built from it and kept beside it.

Slots. Each vector the index ever received has a slot (0, 1, 2, ...): its position in the
float32 vector files and its id in faiss. `ids[slot]` is the dataset id of the row it was read
from, `live[slot]` false once that row was removed or replaced (a tombstone: faiss forgets the
slot too). A built index has slot == row; rows removed later shift the dataset's rows but not
the slots, so the store maps slots to rows through the ids.

What an index covers. `version` and `rows` are the dataset version and row count it holds.
A reader uses it when the dataset is still at `version`, or has only had rows appended since
(those rows, beyond `rows`, it searches exactly); after any other commit (a removal, a
replacement) not applied to the index, the index is stale and the store searches exactly until
the writer has updated it.

Recall is checked when the index is built: `TUNING_QUERIES` rows of the collection are used as
queries, their exact neighbours computed, and `nprobe` is the smallest number of lists whose
re-ranked answers reach `TARGET_RECALL` recall@10. An index that cannot reach it while scanning
at most `MAX_SCAN_FRACTION` of its lists (or `MIN_PROBE_CAP` lists) (vectors without clusters,
such as Gaussian noise in many dimensions) is marked unfit, and `search = "auto"` then stays
exact.

Vectors. The store re-ranks candidates from the exact float32 unit vectors, kept in files
(`vec-*.npy`, one per build or save) that readers memory-map: the pages of the candidates are
read, the rest stays on disk.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.store.ann import ivf
from core.store.ann.files import IndexFiles

log = logging.getLogger(__name__)

FORMAT = 1
TARGET_RECALL = 0.99
TUNING_QUERIES = 64
MAX_SCAN_FRACTION = 1 / 8
MIN_PROBE_CAP = 16  # small collections may scan this many lists whatever the fraction
RERANK = 100  # candidates re-ranked exactly per search (at least; more for deep pages)
SAVE_EVERY_ROWS = 50_000  # a writer saves after this many unsaved appended rows
THREADS = 2


@dataclass
class _Chunk:
    start: int
    stop: int
    name: str  # file name; "" while only in memory
    vectors: np.ndarray  # [stop - start, dim] float32, unit rows (memory-mapped when saved)

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of the chunk (relative), read into memory: a sequential pass over a
        saved chunk reads the file rather than mapping it, so that the pages it passes do not
        stay in the process's resident memory."""
        vectors = self.vectors
        if not isinstance(vectors, np.memmap) or vectors.filename is None:
            return np.asarray(vectors[lo:hi])
        dim = vectors.shape[1]
        flat = np.fromfile(
            vectors.filename, dtype=np.float32, count=(hi - lo) * dim, offset=vectors.offset + lo * dim * 4
        )
        return flat.reshape(hi - lo, dim)


@dataclass
class AnnIndex:
    """An index and the vectors it re-ranks from. Readers treat it as immutable; a writer
    changes it with `apply` and `save`."""

    dim: int
    ivf: Any  # faiss.Index
    ids: list[str]
    live: np.ndarray  # bool [slots]
    chunks: list[_Chunk]
    meta: dict[str, Any]
    files: IndexFiles | None = None
    _published: dict[str, Any] | None = field(default=None, repr=False)

    # ----- what it covers ----------------------------------------------------------------------

    @property
    def version(self) -> str:
        return str(self.meta["version"])

    @property
    def rows(self) -> int:
        return int(self.meta["rows"])

    @property
    def slots(self) -> int:
        return len(self.ids)

    @property
    def nprobe(self) -> int:
        return int(self.meta["nprobe"])

    @property
    def fit(self) -> bool:
        return bool(self.meta["fit"])

    @property
    def generation(self) -> str:
        return str(self.meta.get("generation", ""))

    def describe(self) -> str:
        m = self.meta
        return (
            f"{m['rows']} rows, {m['nlist']} lists, nprobe {m['nprobe']}, measured recall@10"
            f" {m['recall']:.3f}{'' if m['fit'] else ' (unfit: exact search is used)'}"
        )

    # ----- building ----------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        *,
        dim: int,
        rows: int,
        read: Callable[[int, int], np.ndarray],
        ids: list[str],
        version: str,
        files: IndexFiles | None,
        export: Callable[[int, int, Path], None] | None = None,
        chunk_rows: int = 65_536,
    ) -> AnnIndex:
        """Build from the collection: `read(lo, hi)` gives rows [lo, hi) as float32 unit rows;
        `export(lo, hi, path)` appends them to a file (preferred when there are `files`).

        The vectors are streamed into files (or kept in memory without `files`); a sample
        trains the lists; then every vector is filed; then `nprobe` is tuned.
        """
        start = time.perf_counter()
        folder = files.staging() if files is not None else None
        gen = uuid.uuid4().hex[:12]
        nlist = ivf.list_count(rows)
        rng = np.random.default_rng(rows)
        want_sample = min(rows, nlist * ivf.TRAIN_PER_LIST)
        picked = np.sort(rng.choice(rows, size=want_sample, replace=False)) if rows else np.empty(0, np.int64)
        sample = np.empty((want_sample, dim), dtype=np.float32)
        chunk = _Chunk(0, rows, "", np.empty((0, dim), np.float32))
        if folder is not None and export is not None:
            chunk.name = f"vec-{gen}-0-{rows}.npy"
            with open(folder / chunk.name, "wb") as fh:
                np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
            export(0, rows, folder / chunk.name)
            chunk.vectors = np.load(folder / chunk.name, mmap_mode="r")
            for lo in range(0, rows, chunk_rows):
                hi = min(rows, lo + chunk_rows)
                inside = (picked >= lo) & (picked < hi)
                sample[inside] = chunk.read(lo, hi)[picked[inside] - lo]
            return cls._built(chunk, sample, dim, rows, nlist, ids, version, gen, files, start, chunk_rows)
        target = None
        kept: list[np.ndarray] = []
        if folder is not None:
            chunk.name = f"vec-{gen}-0-{rows}.npy"
            target = open(folder / chunk.name, "wb")  # noqa: SIM115 - closed below
            header = {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)}
            np.lib.format.write_array_header_1_0(target, header)
        try:
            for lo in range(0, rows, chunk_rows):
                hi = min(rows, lo + chunk_rows)
                block = np.ascontiguousarray(read(lo, hi), dtype=np.float32)
                inside = (picked >= lo) & (picked < hi)
                sample[inside] = block[picked[inside] - lo]
                if target is not None:
                    target.write(block.tobytes())
                else:
                    kept.append(block)
        finally:
            if target is not None:
                target.close()
        if folder is not None:
            chunk.vectors = np.load(folder / chunk.name, mmap_mode="r")
        else:
            chunk.vectors = np.concatenate(kept) if kept else np.empty((0, dim), np.float32)
        return cls._built(chunk, sample, dim, rows, nlist, ids, version, gen, files, start, chunk_rows)

    @classmethod
    def _built(
        cls, chunk: _Chunk, sample: np.ndarray, dim: int, rows: int, nlist: int, ids: list[str],
        version: str, gen: str, files: IndexFiles | None, start: float, chunk_rows: int,
    ) -> AnnIndex:
        """The rest of `build`, once the vectors are in `chunk` and the sample drawn."""
        read_s = time.perf_counter() - start
        index = ivf.trained(sample, nlist, THREADS)
        del sample
        for lo in range(0, rows, chunk_rows):
            hi = min(rows, lo + chunk_rows)
            ivf.add(index, chunk.read(lo, hi), np.arange(lo, hi))
        meta = {
            "format": FORMAT,
            "dim": dim,
            "version": version,
            "rows": rows,
            "nlist": nlist,
            "nprobe": nlist,
            "recall": 1.0,
            "fit": True,
            "built_rows": rows,
            "generation": gen,
        }
        built = cls(dim, index, list(ids), np.ones(rows, bool), [chunk], meta, files)
        built._tune()
        log.info(
            "search index built: %s; %.1f s (reading %.1f s)",
            built.describe(), time.perf_counter() - start, read_s,
        )
        if files is not None:
            built.save()
        return built

    def _tune(self) -> None:
        """Choose `nprobe`: the fewest lists that reach `TARGET_RECALL` on sample rows."""
        n = self.slots
        nlist = int(self.meta["nlist"])
        if n <= 11:
            self.meta.update(nprobe=nlist, recall=1.0, fit=True)
            return
        rng = np.random.default_rng(n + 1)
        queries = np.sort(rng.choice(n, size=min(TUNING_QUERIES, n), replace=False))
        q = self.vectors(queries)
        truth = _exact_neighbours(q, self.chunks, 11)
        cap = min(nlist, max(MIN_PROBE_CAP, int(nlist * MAX_SCAN_FRACTION)))
        nprobe = 1
        while True:
            got = self._self_recall(q, queries, truth, nprobe)
            if got >= TARGET_RECALL or nprobe >= cap:
                break
            nprobe = min(cap, nprobe * 2)
        self.meta.update(nprobe=nprobe, recall=got, fit=got >= TARGET_RECALL)

    def _self_recall(self, q: np.ndarray, queries: np.ndarray, truth: np.ndarray, nprobe: int) -> float:
        hits = 0
        for i, slot in enumerate(queries):
            found = ivf.search(self.ivf, q[i], RERANK, nprobe)
            scores = self.vectors(found) @ q[i]
            top = found[np.argsort(-scores, kind="stable")[:11]]
            want = [int(s) for s in truth[i] if s != slot][:10]
            got = [int(s) for s in top if s != slot][:10]
            hits += len(set(got) & set(want)) / max(1, len(want))
        return hits / len(queries)

    # ----- loading and saving ------------------------------------------------------------------

    @classmethod
    def load(cls, files: IndexFiles, meta: dict[str, Any] | None = None, *, writable: bool = False) -> AnnIndex | None:
        """The index `files` hold (None when absent or of another format); `writable`: read
        into memory so that `apply` can change it, else memory-mapped."""
        meta = meta if meta is not None else files.read_meta()
        if meta is None or meta.get("format") != FORMAT:
            return None
        index = ivf.load(files.path(meta["ivf"]), mapped=not writable)
        with open(files.path(meta["slots"]), encoding="utf-8") as fh:
            slots = json.load(fh)
        ids: list[str] = slots["ids"]
        live = np.ones(len(ids), bool)
        live[np.asarray(slots["dead"], dtype=np.int64)] = False
        chunks = [
            _Chunk(start, stop, name, np.load(files.path(name), mmap_mode="r"))
            for name, start, stop in meta["chunks"]
        ]
        meta = {k: v for k, v in meta.items() if k not in ("ivf", "slots", "chunks")}
        loaded = cls(int(meta["dim"]), index, ids, live, chunks, meta, files)
        loaded._published = {"ivf": "", "slots": "", "chunks": [[c.name, c.start, c.stop] for c in chunks]}
        return loaded

    def save(self) -> None:
        """Write what changed since the last save as a new generation (no-op without files)."""
        if self.files is None:
            return
        folder = self.files.staging()
        gen = uuid.uuid4().hex[:12]
        saved = [c for c in self.chunks if c.name]
        pending = [c for c in self.chunks if not c.name]  # rows added since the last save
        if pending:
            merged = _Chunk(pending[0].start, pending[-1].stop, "", np.empty(0))
            merged.name = f"vec-{gen}-{merged.start}-{merged.stop}.npy"
            np.save(folder / merged.name, np.concatenate([c.vectors for c in pending]))
            merged.vectors = np.load(folder / merged.name, mmap_mode="r")
            self.chunks = [*saved, merged]
        names = {"ivf": f"ivf-{gen}.faiss", "slots": f"slots-{gen}.json"}
        ivf.save(self.ivf, folder / names["ivf"])
        dead = np.flatnonzero(~self.live).tolist()
        (folder / names["slots"]).write_text(json.dumps({"ids": self.ids, "dead": dead}), encoding="utf-8")
        self.meta["generation"] = gen
        meta = {**self.meta, **names, "chunks": [[c.name, c.start, c.stop] for c in self.chunks]}
        self.files.publish(meta, self._published)
        self._published = meta
        self.meta["unsaved"] = 0

    # ----- changing (a writer) -------------------------------------------------------------

    def apply(self, removed: Iterable[str], added_ids: list[str], added: np.ndarray, *, version: str, rows: int) -> None:
        """A commit: rows of the ids `removed` gone, rows `added` (unit float32) appended; the
        dataset is then at `version` with `rows` rows."""
        gone = set(removed)
        if gone:
            dead = np.array([s for s, id_ in enumerate(self.ids) if id_ in gone and self.live[s]], np.int64)
            ivf.remove(self.ivf, dead)
            self.live[dead] = False
        if len(added_ids):
            start = self.slots
            vectors = np.ascontiguousarray(added, dtype=np.float32)
            ivf.add(self.ivf, vectors, np.arange(start, start + len(vectors)))
            self.ids.extend(added_ids)
            self.live = np.concatenate([self.live, np.ones(len(vectors), bool)])
            self.chunks.append(_Chunk(start, start + len(vectors), "", vectors))
            self.meta["unsaved"] = int(self.meta.get("unsaved", 0)) + len(vectors)
        self.meta.update(version=version, rows=rows)

    @property
    def tombstones(self) -> int:
        return int((~self.live).sum())

    @property
    def unsaved(self) -> int:
        return int(self.meta.get("unsaved", 0))

    # ----- searching ---------------------------------------------------------------------------

    def vectors(self, slots: np.ndarray) -> np.ndarray:
        """The float32 unit vectors of `slots`, in that order."""
        slots = np.asarray(slots, dtype=np.int64)
        out = np.empty((len(slots), self.dim), dtype=np.float32)
        if not len(slots):
            return out
        order = np.argsort(slots, kind="stable")  # reading in file order touches pages once
        ordered = slots[order]
        for chunk in self.chunks:
            lo, hi = np.searchsorted(ordered, [chunk.start, chunk.stop])
            if hi > lo:
                out[order[lo:hi]] = chunk.vectors[ordered[lo:hi] - chunk.start]
        return out

    def candidates(self, q: np.ndarray, count: int, allowed: np.ndarray | None = None) -> np.ndarray:
        """Up to `count` live slots that may be the nearest to `q` (among `allowed` slots);
        fewer only when fewer pass: the lists scanned widen until the answer is full."""
        nlist = int(self.meta["nlist"])
        limit = count if allowed is None else min(count, int(allowed.sum()))
        limit = min(limit, int(self.live.sum()))
        nprobe = self.nprobe
        while True:
            found = ivf.search(self.ivf, q, count, nprobe, allowed)
            if len(found) >= limit or nprobe >= nlist:
                return found
            nprobe = min(nlist, nprobe * 4)


def _exact_neighbours(q: np.ndarray, chunks: list[_Chunk], k: int) -> np.ndarray:
    """The `k` nearest slots of each row of `q`, exactly, reading the vectors chunk by chunk."""
    best_scores = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best = np.empty((len(q), 0), dtype=np.int64)
    step = 65_536
    for chunk in chunks:
        for lo in range(0, chunk.stop - chunk.start, step):
            part = chunk.read(lo, min(lo + step, chunk.stop - chunk.start))
            scores = q @ part.T
            slots = np.broadcast_to(np.arange(chunk.start + lo, chunk.start + lo + len(part)), scores.shape)
            all_scores = np.concatenate([best_scores, scores], axis=1)
            all_slots = np.concatenate([best, slots], axis=1)
            keep = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
            best_scores = np.take_along_axis(all_scores, keep, axis=1)
            best = np.take_along_axis(all_slots, keep, axis=1)
    return best

