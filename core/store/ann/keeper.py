"""`IndexKeeper`: one store handle's index: the view its searches use, the copy its commits update.

A searching handle loads the saved index memory-mapped (`AnnIndex.load`) and lines it up with
the dataset version it serves (`IndexView`), at the first search after each change of version;
it re-reads `meta.json` then, so an index the writer saved is picked up by the next refresh.

A writing handle (the ingest) loads its own copy into memory at its first commit when there
is a usable index: each commit removes the rows it removed and adds the rows it appended
(`after_commit`), so readers only search the rows of the last few commits exactly; it saves every
`SAVE_EVERY_ROWS` appended rows, after any commit that removed rows (readers cannot use an
index that still holds removed rows), and when the ingest ends (`update`). An index that
cannot be brought up to date (missing; a commit not applied to it, e.g. by a writer that was
killed before saving; grown to four times the rows its lists were trained for; a quarter
tombstones) is rebuilt.

The keeper reads the dataset only through the `DatasetReader` it is given: the store holds the
lock that makes that safe. The keeper's own lock serialises loading and lining up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from core.store.ann.files import IndexFiles
from core.store.ann.index import SAVE_EVERY_ROWS, AnnIndex
from core.store.ann.view import IndexView

log = logging.getLogger(__name__)

REBUILD_GROWTH = 4  # rebuild when the rows are this many times those the lists were trained on
REBUILD_TOMBSTONES = 0.25  # ... or when this fraction of the slots are tombstones


class DatasetReader(Protocol):
    """What the keeper reads from the dataset (the store holds the lock that makes it safe)."""

    def embeddings(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of the embedding column as float32 unit rows."""
        ...

    def appends_since(self, version: str) -> bool:
        """Whether every commit after `version` only appended rows (False: unknown version)."""
        ...

    def ids(self, lo: int, hi: int) -> list[str]:
        """The ids of rows [lo, hi)."""
        ...

    def export(self, lo: int, hi: int, target: Path) -> None:
        """Append rows [lo, hi) as float32 unit rows to the file `target` (a build reads the
        whole column this way)."""
        ...


class IndexKeeper:
    def __init__(self, files: IndexFiles | None, dim: int, *, require_fit: bool) -> None:
        """`files`: where the index lives (None: in memory only, for `mem://` datasets);
        `require_fit`: refuse an index whose recall check failed (`search = "auto"`)."""
        self.files = files
        self._dim = dim
        self._require_fit = require_fit
        self._lock = threading.Lock()
        self._loaded: AnnIndex | None = None  # a reader's memory-mapped copy
        self._writer: AnnIndex | None = None  # a writer's copy (in memory, kept up to date)
        self._view: IndexView | None = None
        self._none_for: tuple[str, int] | None = None  # the version known to have no usable index
        self._gave_up = False  # a writer found no usable index: `update` builds it at the end
        self._warned: set[str] = set()

    # ----- searching ---------------------------------------------------------------------------

    def view(self, version: str, rows: int, row_of: dict[str, int], reader: DatasetReader) -> IndexView | None:
        """The index lined up with the dataset at `version` (`rows` rows, ids `row_of`); None
        when there is no index this version can use (the store then searches exactly)."""
        view = self._view
        if view is not None and view.version == version and view.rows == rows:
            return view
        with self._lock:
            view = self._view
            if view is not None and view.version == version and view.rows == rows:
                return view
            if self._none_for == (version, rows):
                return None
            view = self._line_up(version, rows, row_of, reader)
            self._view = view
            self._none_for = None if view is not None else (version, rows)
            return view

    def current_view(self) -> IndexView | None:
        return self._view

    def _line_up(self, version: str, rows: int, row_of: dict[str, int], reader: DatasetReader) -> IndexView | None:
        index = self._writer or self._load()
        if index is None:
            self._warn("missing", "no search index yet for this dataset (the ingest builds it): searching exactly")
            return None
        if self._require_fit and not index.fit:
            self._warn(
                f"unfit {index.generation}",
                f"the search index does not reach its recall target ({index.describe()}): searching exactly",
            )
            return None
        if index.version != version and (rows < index.rows or not reader.appends_since(index.version)):
            self._warn(
                f"stale {index.generation} {version}",
                "the search index misses changes other than appended rows (the ingest updates"
                " or rebuilds it): searching exactly meanwhile",
            )
            return None
        old = self._view
        if old is not None and old.index is index and old.rows <= rows:
            return old.extended(version, rows, reader.embeddings(old.rows, rows) if rows > old.rows else _empty(self._dim))
        tail = reader.embeddings(index.rows, rows) if rows > index.rows else _empty(self._dim)
        return IndexView.line_up(index, version, rows, row_of, tail)

    def _load(self) -> AnnIndex | None:
        if self.files is None:
            return self._loaded
        meta = self.files.read_meta()
        if meta is None:
            return None
        if self._loaded is not None and self._loaded.generation == meta.get("generation"):
            return self._loaded
        self._loaded = AnnIndex.load(self.files, meta)
        if self._loaded is not None:
            log.info("search index loaded from %s: %s", self.files, self._loaded.describe())
        return self._loaded

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message)

    # ----- writing -----------------------------------------------------------------------------

    def build(self, version: str, rows: int, ids: list[str], reader: DatasetReader) -> AnnIndex:
        """Build the index of the dataset at `version` from scratch (and save it)."""
        with self._lock:
            index = AnnIndex.build(
                dim=self._dim, rows=rows, read=reader.embeddings, ids=ids, version=version, files=self.files,
                export=reader.export,
            )
            self._writer, self._gave_up = index, False
            if self.files is None:
                self._loaded = index
            self._view, self._none_for = None, None
            return index

    def update(self, version: str, rows: int, ids: list[str], reader: DatasetReader) -> tuple[str, float]:
        """Bring the index up to the dataset at `version`: add the rows appended since it was
        saved and save, or rebuild it (see the module docstring); what was done and seconds."""
        start = time.perf_counter()
        if rows == 0:
            return "nothing to index (no rows)", 0.0
        with self._lock:
            existed = self._writer is not None or (self.files is not None and self.files.read_meta() is not None)
            index = self._writable(version, rows, reader)
        if index is None or _needs_rebuild(index, rows):
            why = "rebuilt" if existed else "built"
            index = self.build(version, rows, ids, reader)
            return f"{why}: {index.describe()}", time.perf_counter() - start
        with self._lock:
            if not self._saved(index):
                index.save()
            self._view, self._none_for = None, None
        return f"up to date: {index.describe()}", time.perf_counter() - start

    def after_commit(
        self,
        before: tuple[str, int],
        after: tuple[str, int],
        removed_ids: Sequence[str],
        added_ids: list[str],
        added: np.ndarray | None,
        reader: DatasetReader,
    ) -> None:
        """A commit took the dataset from `before` to `after` (version, rows): apply it to the
        writer's copy when there is one (loaded now when rows were removed), and save when due."""
        if (self.files is None and self._writer is None) or self._gave_up:
            return
        with self._lock:
            index = self._writer or self._writable(*before, reader)
            if index is None:
                self._gave_up = True  # no usable index: `update` builds it when the ingest ends
                return
            vectors = added if added is not None else _empty(self._dim)
            index.apply(removed_ids, added_ids, vectors, version=after[0], rows=after[1])
            if removed_ids or index.unsaved >= SAVE_EVERY_ROWS:
                index.save()
            self._view, self._none_for = None, None

    def _writable(self, version: str, rows: int, reader: DatasetReader) -> AnnIndex | None:
        """The writer's copy brought up to `version` by adding appended rows; None when there
        is no index or it misses other changes. Called with the lock held."""
        index = self._writer
        if index is None and self.files is not None:
            meta = self.files.read_meta()
            index = AnnIndex.load(self.files, meta, writable=True) if meta is not None else None
        if index is None:
            return None
        if index.version != version:
            if rows < index.rows or not reader.appends_since(index.version):
                log.warning("the search index at %s misses changes other than appends: rebuilding it", self.files)
                self._writer = None
                return None
            if rows > index.rows:
                # ids of the new rows: the caller's dataset has them at rows [index.rows, rows)
                new = reader.embeddings(index.rows, rows)
                index.apply((), reader.ids(index.rows, rows), new, version=version, rows=rows)
            else:
                index.meta.update(version=version)
        self._writer = index
        return index

    def _saved(self, index: AnnIndex) -> bool:
        """Whether the saved generation is `index` as it is now."""
        if self.files is None:
            return True
        meta = self.files.read_meta()
        return (
            meta is not None
            and not index.unsaved
            and meta.get("generation") == index.generation
            and meta.get("version") == index.version
        )


def _needs_rebuild(index: AnnIndex, rows: int) -> bool:
    built = max(1, int(index.meta.get("built_rows", index.rows)))
    return rows > REBUILD_GROWTH * built or index.tombstones > REBUILD_TOMBSTONES * max(1, index.slots)


def _empty(dim: int) -> np.ndarray:
    return np.empty((0, dim), dtype=np.float32)
