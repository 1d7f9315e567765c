"""DeepLake 4 as the system of record, searched exactly in memory (or through DeepLake at scale).

A collection is one DeepLake dataset:

- columns: `id`, `text`, `source`, `s3_key` (text); `embedding` (`Embedding(dim)`: DeepLake's
  vector column, the only one its vector index can be built on, for collections too big for
  memory); `image` (`Image(jpg)`: `get_bytes` returns the JPEG bytes exactly as appended, empty
  when a row keeps no image; appending and reading cost the same as a raw bytes column, and
  DeepLake tools still see an image); `width`, `height` (int32).
- metadata: `model_name`, `dim`, `schema_version`. Opening with `expect_model=` refuses a
  dataset built by another model (`ModelMismatchError`).
- `content_hash` (text): what the row's source file was when it was read (`sha256:<hex>` of
  its bytes, or `etag:<ETag>` for S3), so `search-all ingest --sync` can tell a changed file.
  Datasets from before it lack the column: they open as they are, and a writable open adds it
  (empty for the old rows, which a sync then re-reads).

Search. DeepLake's TQL scans every row unless its index has been built, many times slower than a
matrix product over the normalised embeddings (benchmarks/README.md, store). So in
"exact" mode (the default up to `exact_max_rows`) the store reads the collection into a
`core.store.exact.Table` and searches that in memory. In "index" mode (or beyond
`exact_max_rows`) it searches the approximate index kept beside the dataset (`core.store.ann`:
built and kept up to date by the writer, `build_index` / `update_index` and each commit),
re-ranking its candidates exactly; the table then holds no vectors. Without a usable index
(missing, stale, or, in "auto", failing its recall check) it searches exactly.

Freshness. A handle sees the version it opened; `refresh()` moves it to the latest commit.
When only rows were appended since (the normal case while an ingest runs), only the new rows
are read and the table grows in place; anything else reloads everything. A read-only handle
(a searching process: one of N replicas while one ingest writes, docs/deployment.md) refreshes
a second DeepLake handle and reads the new rows from it while the first goes on serving, then
swaps them: it only ever sees whole commits, and a slow or unreachable S3 holds up its
refresh, not the reads of the handle that serves (those that need S3 wait on S3 only).

Thread safety. `search`, `existing_ids`, `embedding`, `image_bytes` and `info` may be called
from any number of threads at once, also while another thread appends or refreshes. The
in-memory data is an immutable snapshot swapped in one assignment (rows only ever get added
beyond what a snapshot covers, see `core.store.exact`), so exact searches take no lock; calls
into DeepLake hold the read side of a readers-writer lock, and `append` / `refresh` /
`build_index` its write side (a read-only handle's refresh only for the swap).

Writing. `append` validates, appends in one batch and commits (uncommitted rows die with the
process). `upsert` replaces the rows of ids already present and `delete_ids` removes rows, each
in one commit; rows after a removed one move up, so a handle that sees such a commit reloads
everything (`_only_appends_since`). Writable handles switch DeepLake's automatic index building off, because at about
1M rows it silently turns a commit of a second into minutes (benchmarks/README.md, store);
`build_deeplake_index()` builds it for comparison (the store does not search with it).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypedDict, Unpack

import deeplake
import numpy as np
from deeplake import types

from core.errors import ModelMismatchError, StoreError
from core.store.ann import view as ann_view
from core.store.ann.files import IndexFiles
from core.store.ann.keeper import IndexKeeper
from core.store.base import (
    CollectionInfo,
    Hit,
    Record,
    records_matrix,
    search_request,
)
from core.store.exact import Table, extend_table, unit_rows

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SearchMode = Literal["auto", "exact", "index"]
_READ_CHUNK_ROWS = 65_536  # embeddings normalised per read: bounds the extra memory of a load
HASH_COLUMN = "content_hash"


class SearchTuning(TypedDict, total=False):
    """How a handle searches: keywords of `create`, `open` and `open_or_create`, passed on to
    the constructor, which documents them and gives their defaults."""

    mode: SearchMode
    exact_max_rows: int
    index_candidates: int
    preload: bool | None


def _schema(dim: int) -> dict[str, Any]:
    return {
        "id": types.Text(),
        "embedding": types.Embedding(dim),
        "text": types.Text(),
        "source": types.Text(),
        "s3_key": types.Text(),
        "image": types.Image(sample_compression="jpg"),
        "width": types.Int32(),
        "height": types.Int32(),
    }


def _optional_schema() -> dict[str, Any]:
    """Columns added after schema version 1: absent from older datasets, added when a writer
    opens one (`_add_optional_columns`); readers do without them."""
    return {HASH_COLUMN: types.Text()}


class _Reader:
    """The dataset as the index keeper reads it (`core.store.ann.keeper.DatasetReader`); the
    caller holds the lock that makes reading `ds` safe. `source` (path, creds): where a child
    process can open the dataset too, for `export`."""

    def __init__(self, ds: Any, dim: int, source: tuple[str, dict[str, str] | None] | None = None) -> None:
        self._ds = ds
        self._dim = dim
        self._source = source

    def export(self, lo: int, hi: int, target: Path) -> None:
        """Append rows [lo, hi) as float32 unit rows to the file `target`, read in a child
        process when the dataset can be opened there: DeepLake keeps much of what a process
        read resident (about the size of the column at 100k rows, not returned on close), and
        a child's memory goes when it exits."""
        size = target.stat().st_size
        if self._source is not None and hi - lo >= _EXPORT_CHILD_MIN_ROWS:
            path, creds = self._source
            child = multiprocessing.get_context("spawn").Process(
                target=_export_rows,
                args=(path, creds, str(self._ds.version), lo, hi, str(target)),
                name="search-all index reader",
            )
            child.start()
            child.join()
            if child.exitcode == 0 and target.stat().st_size == size + (hi - lo) * self._dim * 4:
                return
            log.warning("reading the embeddings in a child process failed (exit %s): reading them here", child.exitcode)
            os.truncate(target, size)
        with open(target, "ab") as fh:
            fh.writelines(
                self.embeddings(first, min(hi, first + _READ_CHUNK_ROWS)).tobytes()
                for first in range(lo, hi, _READ_CHUNK_ROWS)
            )

    def embeddings(self, lo: int, hi: int) -> np.ndarray:
        unit = np.empty((max(0, hi - lo), self._dim), dtype=np.float32)
        for first in range(lo, hi, _READ_CHUNK_ROWS):
            last = min(hi, first + _READ_CHUNK_ROWS)
            unit[first - lo : last - lo] = unit_rows(np.asarray(self._ds["embedding"][first:last]))
        return unit

    def appends_since(self, version: str) -> bool:
        return _only_appends_since(self._ds, version)

    def ids(self, lo: int, hi: int) -> list[str]:
        return [_text(i) for i in self._ds["id"][lo:hi]] if hi > lo else []


_EXPORT_ROWS = 8192
_EXPORT_CHILD_MIN_ROWS = 50_000  # fewer rows are read in-process (a child costs seconds to start)
_EXPORT_REOPEN = 4  # chunks read through one DeepLake handle before a fresh one


def _export_rows(path: str, creds: dict[str, str] | None, version: str, lo: int, hi: int, target: str) -> None:
    """(child process) `_Reader.export`: rows [lo, hi) of the dataset at `version`, appended
    to `target`. A fresh handle every few chunks bounds what DeepLake keeps (measured at 100k
    rows: 240 MiB kept instead of 490)."""
    ds = None
    with open(target, "ab") as fh:
        for i, first in enumerate(range(lo, hi, _EXPORT_ROWS)):
            if i % _EXPORT_REOPEN == 0:
                ds = deeplake.open_read_only(path, creds=creds)
                if str(ds.version) != version:
                    raise SystemExit(f"dataset {path} moved past version {version}")
            last = min(hi, first + _EXPORT_ROWS)
            fh.write(unit_rows(np.asarray(ds["embedding"][first:last])).tobytes())


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers. Not reentrant."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


@dataclass(frozen=True)
class _State:
    """The collection as this handle last saw it. `ids` / `row_of` only grow (first id wins)."""

    version: str
    rows: int
    ids: list[str]
    row_of: dict[str, int]
    table: Table | None  # present in exact mode once loaded


@dataclass(frozen=True)
class _Changes:
    """What a handle holds beyond a `_State`: rows from `start` on (0: everything anew), read
    without touching what the state's readers look at (`extend_table` writes past their rows)."""

    version: str
    rows: int
    start: int
    new_ids: list[str]
    table: Table | None


def _settle(old: _State | None, changes: _Changes | None) -> _State:
    """`old` moved on by `changes`, in memory only (quick). `old.ids` and `old.row_of` grow in
    place: when the store is shared, call it under the write lock that also puts the handle
    holding those rows in place, so that a row a reader finds can be read."""
    if changes is None:
        assert old is not None
        return old
    start, new_ids = changes.start, changes.new_ids
    if start and old is not None:
        ids, row_of = old.ids, old.row_of
        del ids[start:]
    else:
        ids, row_of = [], {}
    for row, id_ in enumerate(new_ids, start):
        row_of.setdefault(id_, row)
    ids.extend(new_ids)
    return _State(version=changes.version, rows=changes.rows, ids=ids, row_of=row_of, table=changes.table)


def _only_appends_since(ds: Any, version: str) -> bool:
    """Whether every commit of `ds` after `version` only appended rows."""
    history = list(ds.history)
    seen = [v.id for v in history]
    if version not in seen:
        return False
    later = history[seen.index(version) + 1 :]
    return all(op.startswith("Appended ") for v in later for op in v.operations)


def _clean_creds(creds: Mapping[str, str | None] | None) -> dict[str, str] | None:
    if creds is None:
        return None
    return {k: v for k, v in creds.items() if v}


def _text(value: object) -> str:
    """A text cell as a string: DeepLake reads an empty string back as None."""
    return "" if value is None else str(value)


class DeepLakeStore:
    """A `VectorStore` on a DeepLake 4 dataset; made by `create`, `open` or `open_or_create`."""

    def __init__(
        self,
        ds: Any,
        *,
        path: str,
        read_only: bool,
        mode: SearchMode = "auto",
        exact_max_rows: int = 2_000_000,
        index_candidates: int = 100,
        preload: bool | None = None,
        creds: Mapping[str, str | None] | None = None,
    ) -> None:
        """Wrap an open dataset; use `create`, `open` or `open_or_create`, which pass on the
        same keywords (`SearchTuning`):

        - `mode`: "exact" (in memory), "index" (the approximate index beside the dataset,
          `core.store.ann`), "auto" (exact up to `exact_max_rows` rows, or while the index is
          missing, stale, or failed its recall check);
        - `index_candidates`: candidates of the index re-ranked exactly per search;
        - `creds`: for an `s3://` dataset, where its index is read and written too;
        - `preload`: load the search matrix now rather than at the first search (default: when
          read-only, as a searching process is; a writer such as the ingest rarely searches).
        """
        if mode not in ("auto", "exact", "index"):
            raise ValueError(f"mode must be 'auto', 'exact' or 'index', not {mode!r}")
        self._ds = ds
        self._path = path
        self._read_only = read_only
        self._mode = mode
        self._exact_max_rows = exact_max_rows
        self._index_candidates = index_candidates
        self._lock = _ReadWriteLock()
        # Read-only handles made by `open`: how to open a second handle, which a refresh moves
        # to the latest commit and reads while this one serves, then swaps in (see `refresh`).
        self._reopen: Callable[[], Any] | None = None
        self._spare: Any = None
        self._refreshing = threading.Lock()  # one refresh (or table load) at a time
        meta = ds.metadata
        self._model_name = str(meta["model_name"])
        self._dim = int(meta["dim"])
        self._schema_version = int(meta["schema_version"])
        self._index = IndexKeeper(
            IndexFiles.for_dataset(path, _clean_creds(creds)), self._dim, require_fit=mode == "auto"
        )
        self._full_table = False  # index mode keeps no vectors in the table until it must
        self._source = None if path.startswith("mem://") else (path, _clean_creds(creds))
        if not read_only:
            ds.indexing_mode = deeplake.IndexingMode.Off
        load_table = read_only if preload is None else preload
        self._state: _State | None = self._advance(None, want_table=load_table)

    # ----- opening -------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str,
        *,
        model_name: str,
        dim: int,
        creds: Mapping[str, str | None] | None = None,
        **tuning: Unpack[SearchTuning],
    ) -> DeepLakeStore:
        """Create an empty collection at `path` (local dir, `mem://name`, `s3://bucket/prefix`)."""
        unknown = sorted(set(tuning) - SearchTuning.__optional_keys__)
        if unknown:  # before the dataset is made, not when the constructor refuses the keyword
            raise TypeError(
                f"DeepLakeStore.create() got an unexpected keyword argument {unknown[0]!r}"
            )
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        try:
            ds = deeplake.create(path, creds=_clean_creds(creds))
        except deeplake.LogExistsError:
            raise StoreError(
                f"a dataset already exists at {path}: open it, or choose another path"
            ) from None
        except Exception as exc:
            raise StoreError(f"cannot create dataset {path}: {exc}") from exc
        _stamp(ds, model_name, dim)
        return cls(ds, path=path, read_only=False, creds=creds, **tuning)

    @classmethod
    def open(
        cls,
        path: str,
        *,
        creds: Mapping[str, str | None] | None = None,
        read_only: bool = True,
        expect_model: str | None = None,
        **tuning: Unpack[SearchTuning],
    ) -> DeepLakeStore:
        """Open an existing collection; with `expect_model`, refuse one built by another model."""
        try:
            if read_only:
                ds = deeplake.open_read_only(path, creds=_clean_creds(creds))
            else:
                ds = deeplake.open(path, creds=_clean_creds(creds))
        except deeplake.LogNotexistsError:
            raise StoreError(
                f"no dataset at {path}: check the path, or run the ingest to build one"
            ) from None
        except Exception as exc:
            raise StoreError(f"cannot open dataset {path}: {exc}") from exc
        _check_metadata(ds, path, expect_model)
        store = cls(ds, path=path, read_only=read_only, creds=creds, **tuning)
        if read_only:
            store._reopen = lambda: deeplake.open_read_only(path, creds=_clean_creds(creds))
        return store

    @classmethod
    def open_or_create(
        cls,
        path: str,
        *,
        model_name: str,
        dim: int,
        creds: Mapping[str, str | None] | None = None,
        **tuning: Unpack[SearchTuning],
    ) -> DeepLakeStore:
        """Open `path` for writing, creating it when absent; refuse another model's dataset."""
        try:
            exists = deeplake.exists(path, creds=_clean_creds(creds))
        except Exception as exc:
            raise StoreError(f"cannot reach dataset {path}: {exc}") from exc
        if not exists:
            return cls.create(path, model_name=model_name, dim=dim, creds=creds, **tuning)
        repair_log_counters(path)
        try:
            ds = deeplake.open(path, creds=_clean_creds(creds))
        except Exception as exc:
            raise StoreError(f"cannot open dataset {path}: {exc}") from exc
        if _is_empty_shell(ds):
            # created, then the process died before the first commit stamped it: finish it
            log.warning("dataset %s is an empty, unstamped shell (an interrupted create): finishing it", path)
            _stamp(ds, model_name, dim)
        _check_metadata(ds, path, model_name, action="ingesting into it")
        _add_optional_columns(ds, path)
        store = cls(ds, path=path, read_only=False, creds=creds, **tuning)
        if store._dim != dim:
            raise StoreError(
                f"dataset {path} stores {store._dim}-d embeddings but model {model_name!r}"
                f" gives {dim}-d ones: use another dataset path"
            )
        return store

    @staticmethod
    def exists(path: str, *, creds: Mapping[str, str | None] | None = None) -> bool:
        try:
            return bool(deeplake.exists(path, creds=_clean_creds(creds)))
        except Exception as exc:
            raise StoreError(f"cannot reach dataset {path}: {exc}") from exc

    @staticmethod
    def delete_dataset(path: str, *, creds: Mapping[str, str | None] | None = None) -> None:
        """Delete the whole dataset at `path` (no handle may be open on it)."""
        try:
            deeplake.delete(path, creds=_clean_creds(creds))
        except Exception as exc:
            raise StoreError(f"cannot delete dataset {path}: {exc}") from exc

    # ----- VectorStore -----------------------------------------------------------------------

    @property
    def info(self) -> CollectionInfo:
        state = self._current()
        return CollectionInfo(
            path=self._path,
            model_name=self._model_name,
            dim=self._dim,
            rows=state.rows,
            version=state.version,
            schema_version=self._schema_version,
            search_mode="exact" if self._exact(state.rows) else "index",
            read_only=self._read_only,
        )

    def append(self, records: Sequence[Record], *, content_hashes: Sequence[str] | None = None) -> int:
        """One batch, one commit; `content_hashes[i]` is `records[i]`'s (see the module docstring)."""
        self._check_writable()
        if not records:
            return 0
        data = self._columns(records, content_hashes)
        with self._lock.write():
            state = self._current()
            taken = [r.id for r in records if r.id in state.row_of]
            if taken:
                raise StoreError(
                    f"{len(taken)} id(s) already in dataset {self._path}, e.g. {taken[0]!r}:"
                    " skip them (existing_ids) before appending"
                )
            self._write(state, data, (), f"Search All: append {len(records)} records")
        return len(records)

    def upsert(
        self, records: Sequence[Record], *, content_hashes: Sequence[str] | None = None
    ) -> tuple[int, int]:
        """Write `records`, replacing the rows of ids already present, in one commit; the
        numbers `(added, replaced)`."""
        self._check_writable()
        if not records:
            return 0, 0
        data = self._columns(records, content_hashes)
        with self._lock.write():
            state = self._current()
            wanted = {r.id for r in records}
            old = [row for row, id_ in enumerate(state.ids) if id_ in wanted]
            replaced = len({state.ids[row] for row in old})
            self._write(
                state, data, old,
                f"Search All: write {len(records)} records ({replaced} replaced)",
            )
        return len(records) - replaced, replaced

    def delete_ids(self, ids: Sequence[str]) -> int:
        """Remove every row of `ids` in one commit; the number of ids removed."""
        self._check_writable()
        wanted = set(ids)
        with self._lock.write():
            state = self._current()
            rows = [row for row, id_ in enumerate(state.ids) if id_ in wanted]
            if not rows:
                return 0
            removed = len({state.ids[row] for row in rows})
            self._write(state, None, rows, f"Search All: remove {removed} records")
        return removed

    def _check_writable(self) -> None:
        if self._read_only:
            raise StoreError(f"dataset {self._path} was opened read-only: open it for writing")

    def content_hashes(self) -> dict[str, str]:
        """`{id: content_hash}` of every row ("" for rows written before the column existed)."""
        state = self._current()
        with self._lock.read():
            ds = self._open_ds()
            has = HASH_COLUMN in {col.name for col in ds.schema.columns}
            values = ds[HASH_COLUMN][: state.rows] if has and state.rows else [""] * state.rows
        out: dict[str, str] = {}
        for id_, value in zip(state.ids, values, strict=True):
            out.setdefault(id_, _text(value))
        return out

    def _write(self, state: _State, data: dict[str, Any] | None, delete_rows: Sequence[int], message: str) -> None:
        """Delete `delete_rows`, append `data`, commit; roll back on failure. Write lock held."""
        ds = self._open_ds()
        try:
            for row in sorted(delete_rows, reverse=True):  # later rows move up at each delete
                ds.delete(row)
            if data is not None:
                ds.append(data)
            ds.commit(message)
        except Exception as exc:
            try:
                ds.rollback()
            except Exception:  # noqa: BLE001 - the write error is the one to report
                log.exception("rollback after a failed write failed too")
            raise StoreError(f"cannot write to dataset {self._path}: {exc}") from exc
        self._state = new = self._advance(state, want_table=state.table is not None)
        if not self._exact(new.rows):  # keep the approximate index in step (`core.store.ann.keeper`)
            self._index.after_commit(
                (state.version, state.rows), (new.version, new.rows),
                sorted({state.ids[row] for row in delete_rows}),
                list(data["id"]) if data is not None else [],
                unit_rows(data["embedding"]) if data is not None else None,
                _Reader(ds, self._dim),
            )

    def _columns(self, records: Sequence[Record], content_hashes: Sequence[str] | None) -> dict[str, Any]:
        matrix = records_matrix(records, self._dim)
        if content_hashes is not None and len(content_hashes) != len(records):
            raise ValueError(f"{len(content_hashes)} content hashes for {len(records)} records")
        data = {
            "id": [r.id for r in records],
            "embedding": matrix,
            "text": [r.text for r in records],
            "source": [r.source for r in records],
            "s3_key": [r.s3_key for r in records],
            # b"", never None: a batch mixing bytes and None segfaults DeepLake 4.7.4
            "image": [r.image_jpeg or b"" for r in records],
            "width": np.array([r.width for r in records], dtype=np.int32),
            "height": np.array([r.height for r in records], dtype=np.int32),
        }
        if HASH_COLUMN in {col.name for col in self._open_ds().schema.columns}:
            data[HASH_COLUMN] = list(content_hashes or [""] * len(records))
        elif content_hashes is not None and any(content_hashes):
            raise StoreError(f"dataset {self._path} has no {HASH_COLUMN} column: open it for writing first")
        return data

    def existing_ids(self, ids: Sequence[str]) -> set[str]:
        row_of = self._current().row_of
        return {i for i in ids if i in row_of}

    def search(
        self,
        vector: np.ndarray,
        k: int,
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        offset: int = 0,
    ) -> list[Hit]:
        request = search_request(vector, k, include, exclude, offset, self._dim)
        state = self._current()
        if k == 0 or state.rows == 0:
            return []
        if not self._exact(state.rows):
            view = self._index_view(state)
            if view is not None:
                if state.table is None:
                    state = self._load_table()
                assert state.table is not None
                return ann_view.search(view, state.table, request, state.ids, self._index_candidates)
            self._full_table = True  # no usable index: search exactly
        if state.table is None or state.table.unit.shape[1] != self._dim:
            state = self._load_table()
        assert state.table is not None
        return state.table.search(request, state.ids)

    def _index_view(self, state: _State) -> ann_view.IndexView | None:
        with self._lock.read():
            return self._index.view(state.version, state.rows, state.row_of, _Reader(self._open_ds(), self._dim))

    def embedding(self, id: str) -> np.ndarray:
        row = self._current().row_of.get(id)
        if row is None:
            raise KeyError(id)
        with self._lock.read():
            try:
                return np.array(self._open_ds()["embedding"][row], dtype=np.float32)
            except Exception as exc:  # storage unreachable (S3 down) or damaged
                raise StoreError(f"cannot read the embedding of {id!r} in dataset {self._path}: {exc}") from exc

    def id_at(self, row: int) -> str | None:
        ids = self._current().ids
        return ids[row] if 0 <= row < len(ids) else None

    def embeddings_at(self, rows: Sequence[int]) -> np.ndarray:
        state = self._current()
        wanted = np.asarray(rows, dtype=np.int64).reshape(-1)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= state.rows):
            raise StoreError(f"row {int(wanted.max())} is not in dataset {self._path} ({state.rows} rows)")
        if state.table is not None and state.table.unit.shape[1]:  # the in-memory matrix (unit length)
            return np.array(state.table.unit[wanted], dtype=np.float32)
        view = self._index.current_view()
        if view is not None and view.version == state.version and view.rows == state.rows:
            return view.vectors_of_rows(wanted)
        out = np.empty((len(wanted), self.info.dim), dtype=np.float32)
        with self._lock.read():
            column = self._open_ds()["embedding"]
            for i, row in enumerate(wanted):
                out[i] = column[int(row)]
        return out

    def image_bytes(self, row_or_hit: int | Hit) -> bytes | None:
        row = row_or_hit.row if isinstance(row_or_hit, Hit) else int(row_or_hit)
        rows = self._current().rows
        if not 0 <= row < rows:
            raise StoreError(f"row {row} is not in dataset {self._path} ({rows} rows)")
        with self._lock.read():
            try:
                data = self._open_ds()["image"].get_bytes(row)
            except Exception as exc:  # storage unreachable (S3 down) or damaged
                raise StoreError(f"cannot read the image at row {row} of dataset {self._path}: {exc}") from exc
        return bytes(data) or None

    def has_text(self) -> bool:
        state = self._current()
        if state.table is not None:  # exact mode: the texts are in memory
            return any(state.table.texts[: state.table.n])
        with self._lock.read():
            column = self._open_ds()["text"]
            return any(
                any(_text(t) for t in column[lo : min(state.rows, lo + _READ_CHUNK_ROWS)])
                for lo in range(0, state.rows, _READ_CHUNK_ROWS)
            )

    def s3_keys(self) -> list[tuple[int, str, str]]:
        """`(row, id, s3_key)` of every row whose image is on S3 (the ingest checks they exist)."""
        state = self._current()
        with self._lock.read():
            keys = self._open_ds()["s3_key"][: state.rows] if state.rows else []
        return [(row, state.ids[row], _text(key)) for row, key in enumerate(keys) if key]

    def refresh(self) -> bool:
        """Move to the latest commit; whether anything changed.

        A read-only handle from `open` (a searching process) refreshes a spare handle and reads
        the new rows from it while this one goes on serving, then swaps the two in a moment:
        reads never wait on S3 for a refresh (a slow or unreachable S3 holds up only the
        refresh, which fails and leaves everything as it was). Other handles refresh in place,
        under the write lock.
        """
        if self._reopen is None:
            with self._lock.write():
                state = self._current()
                try:
                    self._open_ds().refresh()
                except Exception as exc:
                    raise StoreError(f"cannot refresh dataset {self._path}: {exc}") from exc
                self._state = self._advance(state, want_table=state.table is not None)
                return self._state is not state
        with self._refreshing:
            state = self._current()
            spare, self._spare = self._spare, None  # dropped if anything below fails
            try:
                if spare is None:
                    spare = self._reopen()
                else:
                    spare.refresh()
            except Exception as exc:
                raise StoreError(f"cannot refresh dataset {self._path}: {exc}") from exc
            changes = self._changes(spare, state, want_table=state.table is not None)
            if changes is None:
                self._spare = spare
                return False
            with self._lock.write():
                self._current()  # closed meanwhile: StoreError, and the spare goes
                self._state = _settle(state, changes)  # (the state changes only under _refreshing)
                self._ds, self._spare = spare, self._ds
            return True

    def close(self) -> None:
        # Not behind a refresh waiting on S3: that one finds the store closed when it is done.
        with self._lock.write():
            self._ds = self._spare = None
            self._state = None

    def __enter__(self) -> DeepLakeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- beyond the interface ------------------------------------------------------------------

    def build_index(self) -> float:
        """Build the approximate index (`core.store.ann`) from the dataset now and save it
        beside the dataset; the seconds it took."""
        self._check_writable()
        start = time.perf_counter()
        with self._lock.read():
            state = self._current()
            reader = _Reader(self._open_ds(), self._dim, self._source)
            self._index.build(state.version, state.rows, list(state.ids), reader)
        return time.perf_counter() - start

    def update_index(self) -> tuple[str, float]:
        """Bring the approximate index up to the dataset's current version: add the rows
        appended since it was saved, or build it when missing or stale; what was done and the
        seconds it took (`core.store.ann.keeper`)."""
        self._check_writable()
        with self._lock.read():
            state = self._current()
            reader = _Reader(self._open_ds(), self._dim, self._source)
            return self._index.update(state.version, state.rows, list(state.ids), reader)

    def build_deeplake_index(self) -> float:
        """Build DeepLake's own vector index now and commit; the seconds it took (for the
        benchmark's comparison: the store does not search with it)."""
        self._check_writable()
        with self._lock.write():
            ds = self._open_ds()
            start = time.perf_counter()
            ds.indexing_mode = deeplake.IndexingMode.Always
            try:
                ds.build_indexes()
                ds.commit("Search All: build vector index")
            finally:
                ds.indexing_mode = deeplake.IndexingMode.Off
            state = self._current()
            self._state = self._advance(state, want_table=state.table is not None)
            return time.perf_counter() - start

    # ----- internals -----------------------------------------------------------------------

    def _open_ds(self) -> Any:
        if self._ds is None:
            raise StoreError(f"the store for {self._path} is closed")
        return self._ds

    def _current(self) -> _State:
        state = self._state
        if state is None:
            raise StoreError(f"the store for {self._path} is closed")
        return state

    def _exact(self, rows: int) -> bool:
        return self._mode == "exact" or (self._mode == "auto" and rows <= self._exact_max_rows)

    def _load_table(self) -> _State:
        with self._refreshing, self._lock.write():
            state = self._current()
            if state.table is None or state.table.unit.shape[1] != self._table_dim(state.rows):
                # (a table without vectors, of index mode, is read again when exact search is due)
                self._state = state = self._advance(replace(state, table=None), want_table=True)
            return state

    def _table_dim(self, rows: int) -> int:
        """Columns of the table's vectors: none while the index answers (its files hold them)."""
        return self._dim if self._full_table or self._exact(rows) else 0

    def _advance(self, old: _State | None, *, want_table: bool) -> _State:
        """The state for the handle's current version, reading only appended rows when it can.

        Called with the write lock held (or before the store is shared).
        """
        return _settle(old, self._changes(self._open_ds(), old, want_table=want_table))

    def _changes(self, ds: Any, old: _State | None, *, want_table: bool) -> _Changes | None:
        """What `ds` (at its version) holds beyond `old`; None when nothing. Reads DeepLake and
        leaves `old` as its readers see it (see `_Changes`): no lock needed, but `ds` must be
        a handle no other thread uses meanwhile (the served one under the write lock, or the
        spare handle of a refresh)."""
        version, rows = str(ds.version), len(ds)
        same = old is not None and old.version == version and old.rows == rows
        if same and old is not None and (old.table is not None or not want_table):
            return None
        try:
            grow = (
                old is not None
                and rows >= old.rows
                and (same or _only_appends_since(ds, old.version))
            )
            start = old.rows if grow and old is not None else 0
            new_ids = [_text(i) for i in ds["id"][start:rows]] if rows > start else []
            base = old.table if grow and old is not None else None
            table = self._read_table(ds, base, rows) if want_table else None
        except Exception as exc:
            raise StoreError(f"cannot read dataset {self._path}: {exc}") from exc
        return _Changes(version=version, rows=rows, start=start, new_ids=new_ids, table=table)

    def _read_table(self, ds: Any, base: Table | None, rows: int) -> Table:
        # In index mode the vectors stay in the index's files: the table holds the rest.
        dim = self._table_dim(rows)
        if base is not None and base.unit.shape[1] != dim:
            base = None
        start = base.n if base is not None else 0
        unit = np.empty((rows - start, dim), dtype=np.float32)
        if dim:
            unit[:] = _Reader(ds, dim).embeddings(start, rows)
        texts, sources, s3_keys = (
            [_text(t) for t in ds[column][start:rows]] if rows > start else []
            for column in ("text", "source", "s3_key")
        )
        sizes = np.zeros((rows - start, 2), dtype=np.int32)
        if rows > start:
            sizes[:, 0] = ds["width"][start:rows]
            sizes[:, 1] = ds["height"][start:rows]
        return extend_table(base, unit, texts, sources, s3_keys, sizes)


def _stamp(ds: Any, model_name: str, dim: int) -> None:
    """Give a new (or empty, unstamped) dataset the collection's columns and metadata, in one
    commit: a crash before it leaves an empty shell, which `open_or_create` finishes."""
    present = {col.name for col in ds.schema.columns}
    for name, dtype in {**_schema(dim), **_optional_schema()}.items():
        if name not in present:
            ds.add_column(name, dtype)
    ds.metadata["model_name"] = model_name
    ds.metadata["dim"] = dim
    ds.metadata["schema_version"] = SCHEMA_VERSION
    ds.commit(f"Search All: new collection for {model_name} ({dim}-d)")


def _is_empty_shell(ds: Any) -> bool:
    """A dataset `deeplake.create` made but nothing stamped: no rows, none of the collection's
    metadata, no column but the collection's own."""
    meta = ds.metadata
    if any(key in meta for key in ("model_name", "dim", "schema_version")) or len(ds):
        return False
    return {col.name for col in ds.schema.columns} <= set(_schema(1)) | set(_optional_schema())


def _add_optional_columns(ds: Any, path: str) -> None:
    """Give a dataset written by an older version the columns added since, in one commit."""
    present = {col.name for col in ds.schema.columns}
    missing = {name: dtype for name, dtype in _optional_schema().items() if name not in present}
    if not missing:
        return
    for name, dtype in missing.items():
        ds.add_column(name, dtype)
    ds.commit(f"Search All: add column(s) {', '.join(missing)}")
    log.info("dataset %s: added the column(s) %s", path, ", ".join(missing))


_LOG_DIR = "_deeplake_log"
_COUNTER = "next_base"


def repair_log_counters(path: str) -> list[str]:
    """Rewrite the empty commit counters a write that failed for disk space leaves behind.

    DeepLake 4.7.4 keeps, per branch (and for `_meta`), a folder `_deeplake_log/<branch>/` of
    numbered log files (`0000000004m00000000.jsonl.lz4`, one per commit, numbered from 1) and
    `next_base`, the next number as an 8-byte little-endian integer. A write that fails for
    space can leave `next_base` empty; every later commit then fails with "Invalid CAS counter:
    empty" although the rows are intact. The right value is the highest log number present
    plus one. Local datasets only; call it while holding the writer lock
    (the ingest takes it). Returns the counters repaired.
    """
    if "://" in path:
        return []
    repaired = []
    for counter in sorted(Path(path, _LOG_DIR).glob(f"*/{_COUNTER}")):
        if counter.stat().st_size == 8:
            continue
        numbers = [
            int(match.group(1))
            for entry in counter.parent.iterdir()
            if (match := re.match(r"(\d+)[a-z]\d*\.jsonl", entry.name))
        ]
        value = max(numbers, default=0) + 1
        temp = counter.with_name(f"{_COUNTER}.repair")
        temp.write_bytes(struct.pack("<Q", value))
        os.replace(temp, counter)
        log.warning(
            "dataset %s: %s was empty or damaged (a write that failed, e.g. a full disk);"
            " set it to %d, the highest log file plus one", path, counter, value,
        )
        repaired.append(str(counter))
    return repaired


def _check_metadata(ds: Any, path: str, expect_model: str | None, *, action: str = "searching it") -> None:
    """Refuse what is not a collection this program can use; `action`, what the caller was
    about to do (for the model mismatch message)."""
    meta = ds.metadata
    missing = [key for key in ("model_name", "dim", "schema_version") if key not in meta]
    if missing:
        raise StoreError(
            f"dataset {path} is not a Search All collection (its metadata lacks"
            f" {', '.join(missing)}): point to a dataset built by the ingest"
        )
    if int(meta["schema_version"]) > SCHEMA_VERSION:
        raise StoreError(
            f"dataset {path} has schema version {meta['schema_version']}, newer than this"
            f" program understands ({SCHEMA_VERSION}): upgrade Search All"
        )
    columns = {col.name for col in ds.schema.columns}
    absent = sorted(set(_schema(1)) - columns)
    if absent:
        raise StoreError(f"dataset {path} lacks the column(s) {', '.join(absent)}")
    built_with = str(meta["model_name"])
    if expect_model is not None and built_with != expect_model:
        if action == "searching it":
            raise ModelMismatchError(
                f"dataset {path} was built with model '{built_with}'; searching it with"
                f" '{expect_model}' would give meaningless results: rebuild it or pass"
                f" --model {built_with}"
            )
        raise ModelMismatchError(
            f"dataset {path} was built with model '{built_with}'; {action} with"
            f" '{expect_model}' would mix two models' embeddings: pass --model {built_with}, or"
            f" --overwrite to delete it and rebuild it with '{expect_model}'"
        )
