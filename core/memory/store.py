"""Channel memory on DeepLake: one dataset per tenant, searched exactly in memory.

Layout (the decision and its figures: docs/architecture.md, "Channel memory"): each tenant
(server or workspace) has its own dataset under `<dir>/tenants/<platform>-<id>/`, with the
columns `id` (`<message>/<item>`), `embedding`, `text` (the message's text), `channel`,
`message`, `item`, `author`, `posted` (epoch seconds), `link`, `image` (the thumbnail, a JPEG
without metadata), `width`, `height`. So a search reads only its tenant's rows (there is no
other tenant's row to leak), erasing a tenant deletes one folder, backing one up copies one,
and a deleted message reloads only its own tenant.

Search is exact: each open tenant keeps a snapshot (unit-length embeddings, channel codes,
lowercased texts, metadata) and answers `unit[mask] @ q` where the mask keeps the channels the
asker may read and the filter words; the top-k is taken after the mask, so a page is never
short because of it. Snapshots are immutable; writes build a new one and swap it in.

Thread safety: `search`, `count`, `oldest` from any thread; writes (`add`, `delete`, `drop`)
and `image` hold their tenant's lock. At most `max_open` tenants stay open (least recently used
closed first; a tenant being written is never closed).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deeplake
import numpy as np
from deeplake import types

from core.errors import StoreError
from core.memory.model import MemoryHit, MemoryMeta, Tenant
from core.store.base import JPEG_MAGIC, normalise_words, text_passes, unit_query
from core.store.exact import top_indices, unit_rows

log = logging.getLogger(__name__)

_TEXT_COLUMNS = ("id", "text", "channel", "message", "item", "author", "link")


@dataclass(frozen=True, eq=False)
class MemoryRecord:
    """One remembered image, as written: its embedding, where it was posted, its thumbnail."""

    id: str  # "<message>/<item>"
    embedding: np.ndarray  # float32 [dim]
    text: str
    channel: str
    message: str
    item: str
    author: str
    posted_at: float
    link: str
    thumbnail: bytes  # JPEG, no metadata
    width: int  # of the original image
    height: int


_COLUMN_LISTS = ("ids", "lowered", "texts", "messages", "items", "authors", "links")


def _grown(buf: np.ndarray, used: int, extra: np.ndarray) -> np.ndarray:
    """`buf` with `extra` written after its first `used` rows, reallocated (x1.5) when full;
    rows before `used` are never written, so snapshots holding views of them stay valid."""
    need = used + len(extra)
    if need > len(buf):
        bigger = np.empty((max(need, len(buf) * 3 // 2 + 16), *buf.shape[1:]), dtype=buf.dtype)
        bigger[:used] = buf[:used]
        buf = bigger
    buf[used:need] = extra
    return buf


@dataclass(frozen=True, eq=False)
class _Snapshot:
    """A tenant's rows [0, n) as last committed. Readers see exactly those rows: appending grows
    the buffers and lists in place beyond `n` (a new snapshot with a larger `n`, so adding one
    image to a big tenant costs the image, not the tenant); deleting builds fresh copies."""

    n: int
    unit_buf: np.ndarray  # [>= n, dim] unit rows
    codes_buf: np.ndarray  # [>= n] int32: index into `channels`
    posted_buf: np.ndarray  # [>= n] float64
    sizes_buf: np.ndarray  # [>= n, 2] int32
    channels: list[str]  # grows in place (codes only ever point below its length at `n`)
    ids: list[str]  # these lists may hold rows past n (a later snapshot's)
    lowered: list[str]
    texts: list[str]
    messages: list[str]
    items: list[str]
    authors: list[str]
    links: list[str]
    row_of: dict[str, int]  # id -> row; rows >= n belong to a later snapshot

    @property
    def unit(self) -> np.ndarray:
        return self.unit_buf[: self.n]

    @property
    def codes(self) -> np.ndarray:
        return self.codes_buf[: self.n]

    @property
    def posted(self) -> np.ndarray:
        return self.posted_buf[: self.n]

    def row(self, id: str) -> int | None:
        row = self.row_of.get(id)
        return row if row is not None and row < self.n else None

    def rows_where(self, *, channel: str | None, message: str | None, author: str | None,
                   items: Collection[str] | None) -> list[int]:
        code = self.channels.index(channel) if channel is not None and channel in self.channels else None
        if channel is not None and code is None:
            return []
        out = []
        codes = self.codes
        for row in range(self.n):
            if code is not None and codes[row] != code:
                continue
            if message is not None and self.messages[row] != message:
                continue
            if author is not None and self.authors[row] != author:
                continue
            if items is not None and self.items[row] not in items:
                continue
            out.append(row)
        return out

    def without(self, rows: Sequence[int]) -> _Snapshot:
        keep = np.ones(self.n, dtype=bool)
        keep[list(rows)] = False
        idx = np.flatnonzero(keep)
        lists = {name: [getattr(self, name)[i] for i in idx] for name in _COLUMN_LISTS}
        return _Snapshot(
            n=len(idx), unit_buf=self.unit[idx], codes_buf=self.codes[idx], posted_buf=self.posted[idx],
            sizes_buf=self.sizes_buf[: self.n][idx], channels=list(self.channels),
            row_of={id_: row for row, id_ in enumerate(lists["ids"])}, **lists,
        )

    def plus(self, records: Sequence[MemoryRecord], unit: np.ndarray) -> _Snapshot:
        """This snapshot followed by `records` (made one at a time: the caller holds the write lock)."""
        channels = self.channels
        for rec in records:
            if rec.channel not in channels:
                channels.append(rec.channel)
        code_of = {c: i for i, c in enumerate(channels)}
        n, m = self.n, len(records)
        values = {
            "ids": [r.id for r in records], "lowered": [r.text.lower() for r in records],
            "texts": [r.text for r in records], "messages": [r.message for r in records],
            "items": [r.item for r in records], "authors": [r.author for r in records],
            "links": [r.link for r in records],
        }
        for name, new in values.items():
            column = getattr(self, name)
            del column[n:]  # rows a dropped later snapshot wrote (a failed commit)
            column.extend(new)
        for row, id_ in enumerate(values["ids"], n):
            self.row_of[id_] = row
        return _Snapshot(
            n=n + m,
            unit_buf=_grown(self.unit_buf, n, unit),
            codes_buf=_grown(self.codes_buf, n, np.array([code_of[r.channel] for r in records], np.int32)),
            posted_buf=_grown(self.posted_buf, n, np.array([r.posted_at for r in records], np.float64)),
            sizes_buf=_grown(self.sizes_buf, n, np.array([[r.width, r.height] for r in records],
                                                         np.int32).reshape(-1, 2)),
            channels=channels, row_of=self.row_of,
            **{name: getattr(self, name) for name in _COLUMN_LISTS},
        )

    def meta(self, tenant: Tenant, row: int) -> MemoryMeta:
        return MemoryMeta(tenant=tenant, channel=self.channels[int(self.codes_buf[row])], message=self.messages[row],
                          item=self.items[row], author=self.authors[row], posted_at=float(self.posted_buf[row]),
                          link=self.links[row])


def _empty_snapshot(dim: int) -> _Snapshot:
    return _Snapshot(n=0, unit_buf=np.empty((0, dim), np.float32), codes_buf=np.empty(0, np.int32),
                     posted_buf=np.empty(0, np.float64), sizes_buf=np.empty((0, 2), np.int32), channels=[],
                     row_of={}, **{name: [] for name in _COLUMN_LISTS})


def _text(value: object) -> str:
    return "" if value is None else str(value)


class _TenantData:
    """One tenant's open dataset and snapshot; `lock` serialises its writes and image reads."""

    def __init__(self, tenant: Tenant, ds: Any, dim: int) -> None:
        self.tenant = tenant
        self.ds = ds
        self.dim = dim
        self.lock = threading.Lock()
        self.snapshot = self._load()

    def _load(self) -> _Snapshot:
        ds = self.ds
        n = len(ds)
        if n == 0:
            return _empty_snapshot(self.dim)
        cols = {c: [_text(v) for v in ds[c][:n]] for c in _TEXT_COLUMNS}
        channels = list(dict.fromkeys(cols["channel"]))
        code_of = {c: i for i, c in enumerate(channels)}
        sizes = np.zeros((n, 2), np.int32)
        sizes[:, 0] = ds["width"][:n]
        sizes[:, 1] = ds["height"][:n]
        return _Snapshot(
            n=n, unit_buf=unit_rows(np.asarray(ds["embedding"][:n])),
            codes_buf=np.array([code_of[c] for c in cols["channel"]], np.int32),
            posted_buf=np.asarray(ds["posted"][:n], np.float64), sizes_buf=sizes, channels=channels,
            ids=cols["id"], lowered=[t.lower() for t in cols["text"]], texts=cols["text"], messages=cols["message"],
            items=cols["item"], authors=cols["author"], links=cols["link"],
            row_of={id_: row for row, id_ in enumerate(cols["id"])},
        )


class MemoryStore:
    """Every tenant's memory under `root` (a local folder); see the module docstring."""

    def __init__(self, root: Path, *, model_name: str, dim: int, max_open: int = 64) -> None:
        self._root = root
        self._model_name = model_name
        self._dim = dim
        self._max_open = max(1, max_open)
        self._open: OrderedDict[Tenant, _TenantData] = OrderedDict()
        self._open_lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    @property
    def dim(self) -> int:
        return self._dim

    def path_of(self, tenant: Tenant) -> Path:
        """The tenant's dataset folder: back it up or erase it as a whole."""
        return self._root / "tenants" / tenant.key

    def tenants(self) -> list[Tenant]:
        """Tenants that have a dataset on disk."""
        folder = self._root / "tenants"
        out = []
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            platform, _, tenant_id = entry.name.partition("-")
            try:
                out.append(Tenant(platform, tenant_id))  # type: ignore[arg-type]
            except ValueError:
                continue
        return out

    # ----- reading -------------------------------------------------------------------------

    def count(self, tenant: Tenant, channel: str | None = None) -> int:
        snap = self._snapshot(tenant)
        if snap is None:
            return 0
        if channel is None:
            return snap.n
        if channel not in snap.channels:
            return 0
        return int(np.count_nonzero(snap.codes == snap.channels.index(channel)))

    def oldest(self, tenant: Tenant, channel: str | None = None) -> float | None:
        snap = self._snapshot(tenant)
        if snap is None or not snap.n:
            return None
        if channel is None:
            return float(snap.posted.min())
        rows = snap.rows_where(channel=channel, message=None, author=None, items=None)
        return float(snap.posted[rows].min()) if rows else None

    def search(
        self,
        tenant: Tenant,
        vector: np.ndarray,
        k: int,
        *,
        channels: Collection[str] | None,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        offset: int = 0,
    ) -> tuple[list[MemoryHit], np.ndarray]:
        """The best `k` images after the best `offset`, among `channels` (None: all) and the
        filter words, best first; and their unit embeddings [len(hits), dim] (to fold near-duplicates)."""
        if k < 0 or offset < 0:
            raise ValueError(f"k and offset must be >= 0, got k={k}, offset={offset}")
        q = unit_query(vector, self._dim)
        snap = self._snapshot(tenant)
        empty = ([], np.empty((0, self._dim), np.float32))
        if snap is None or not snap.n or k == 0:
            return empty
        mask = np.ones(snap.n, dtype=bool)
        if channels is not None:
            codes = [i for i, c in enumerate(snap.channels) if c in channels]
            if not codes:
                return empty
            mask &= np.isin(snap.codes, codes)
        inc, exc = normalise_words(include), normalise_words(exclude)
        if inc or exc:
            lowered = snap.lowered
            mask &= np.fromiter((text_passes(lowered[i], inc, exc) for i in range(snap.n)), bool, count=snap.n)
        rows = np.flatnonzero(mask)
        # Gathering rows costs about as much as multiplying them: gather only when few pass.
        scores = snap.unit[rows] @ q if len(rows) * 2 < snap.n else (snap.unit @ q)[rows]
        top = top_indices(scores, offset + k)[offset:]
        picked = rows[top]
        hits = [
            MemoryHit(
                id=snap.ids[row], score=float(scores[i]), text=snap.texts[row], source=f"memory:{tenant.key}",
                s3_key="", width=int(snap.sizes_buf[row, 0]), height=int(snap.sizes_buf[row, 1]), row=-1,
                meta=snap.meta(tenant, row),
            )
            for row, i in zip(picked.tolist(), top.tolist(), strict=True)
        ]
        return hits, np.array(snap.unit[picked], dtype=np.float32)

    def embedding(self, tenant: Tenant, id: str) -> tuple[np.ndarray, MemoryMeta]:
        """The stored (unit) embedding of image `id` and where it was posted; KeyError when unknown."""
        snap = self._snapshot(tenant)
        row = None if snap is None else snap.row(id)
        if snap is None or row is None:
            raise KeyError(id)
        return np.array(snap.unit[row]), snap.meta(tenant, row)

    def image(self, tenant: Tenant, id: str) -> bytes | None:
        """The thumbnail of image `id` (a JPEG without metadata); None when it is not remembered."""
        data = self._data(tenant, create=False)
        if data is None:
            return None
        with data.lock:
            snap = data.snapshot
            row = snap.row(id)
            if row is None:
                return None
            blob = bytes(data.ds["image"].get_bytes(row))
        return blob or None

    # ----- writing -------------------------------------------------------------------------

    def add(self, tenant: Tenant, records: Sequence[MemoryRecord]) -> int:
        """Write `records` in one commit, skipping ids already remembered; the number written."""
        if not records:
            return 0
        data = self._data(tenant, create=True)
        assert data is not None
        for rec in records:
            if not rec.thumbnail.startswith(JPEG_MAGIC):
                raise StoreError(f"memory record {rec.id!r}: the thumbnail is not a JPEG")
        with data.lock:
            snap = data.snapshot
            seen: set[str] = set()
            fresh = []
            for rec in records:
                if rec.id not in seen and snap.row(rec.id) is None:
                    seen.add(rec.id)
                    fresh.append(rec)
            if not fresh:
                return 0
            matrix = np.stack([np.asarray(r.embedding, np.float32).reshape(-1) for r in fresh])
            if matrix.shape[1] != self._dim or not np.all(np.isfinite(matrix)):
                raise StoreError(f"memory embeddings must be finite {self._dim}-d vectors")
            columns = {
                "id": [r.id for r in fresh], "embedding": matrix, "text": [r.text for r in fresh],
                "channel": [r.channel for r in fresh], "message": [r.message for r in fresh],
                "item": [r.item for r in fresh], "author": [r.author for r in fresh],
                "posted": np.array([r.posted_at for r in fresh], np.float64),
                "link": [r.link for r in fresh], "image": [r.thumbnail for r in fresh],
                "width": np.array([r.width for r in fresh], np.int32),
                "height": np.array([r.height for r in fresh], np.int32),
            }
            self._commit(data, lambda ds: ds.append(columns), f"remember {len(fresh)} images")
            data.snapshot = snap.plus(fresh, unit_rows(matrix))
        return len(fresh)

    def delete(
        self,
        tenant: Tenant,
        *,
        channel: str | None = None,
        message: str | None = None,
        author: str | None = None,
        items: Collection[str] | None = None,
        keep_items: Collection[str] | None = None,
    ) -> int:
        """Remove the rows matching every criterion given (DeepLake row deletion, one commit);
        the number removed. `keep_items`: of the matching rows, keep those items (a message edited
        to drop some attachments)."""
        if channel is None and message is None and author is None and items is None:
            raise ValueError("delete needs a channel, message, author or items (drop() erases a tenant)")
        data = self._data(tenant, create=False)
        if data is None:
            return 0
        with data.lock:
            snap = data.snapshot
            rows = snap.rows_where(channel=channel, message=message, author=author, items=items)
            if keep_items is not None:
                rows = [r for r in rows if snap.items[r] not in keep_items]
            if not rows:
                return 0

            def remove(ds: Any) -> None:
                for row in sorted(rows, reverse=True):  # later rows move up at each delete
                    ds.delete(row)

            self._commit(data, remove, f"forget {len(rows)} images")
            data.snapshot = snap.without(rows)
        return len(rows)

    def drop(self, tenant: Tenant) -> int:
        """Erase a tenant's whole memory (its dataset folder); the number of images it held."""
        path = self.path_of(tenant)
        with self._open_lock:
            data = self._open.pop(tenant, None)
        count = 0
        if data is not None:
            with data.lock:
                count = data.snapshot.n
                data.ds = None
        elif path.exists():
            count = self.count(tenant)
            with self._open_lock:
                self._open.pop(tenant, None)
        if path.exists():
            shutil.rmtree(path)
        return count

    def close(self) -> None:
        with self._open_lock:
            self._open.clear()

    # ----- internals ----------------------------------------------------------------------------

    def _commit(self, data: _TenantData, change: Any, message: str) -> None:
        ds = data.ds
        if ds is None:
            raise StoreError(f"the memory of {data.tenant.key} was erased while being written")
        try:
            change(ds)
            ds.commit(f"Search All memory: {message}")
        except Exception as exc:
            try:
                ds.rollback()
            except Exception:  # the write error is the one to report
                log.exception("rollback after a failed memory write failed too")
            raise StoreError(f"cannot write the memory of {data.tenant.key}: {exc}") from exc

    def _snapshot(self, tenant: Tenant) -> _Snapshot | None:
        data = self._data(tenant, create=False)
        return None if data is None else data.snapshot

    def _data(self, tenant: Tenant, *, create: bool) -> _TenantData | None:
        with self._open_lock:
            data = self._open.get(tenant)
            if data is not None:
                self._open.move_to_end(tenant)
                return data
            path = self.path_of(tenant)
            if not path.exists() and not create:
                return None
            data = _TenantData(tenant, self._open_ds(path), self._dim)
            self._open[tenant] = data
            self._evict()
            return data

    def _evict(self) -> None:
        for tenant in list(self._open)[: max(0, len(self._open) - self._max_open)]:
            data = self._open[tenant]
            if data.lock.acquire(blocking=False):
                try:
                    del self._open[tenant]
                finally:
                    data.lock.release()

    def _open_ds(self, path: Path) -> Any:
        try:
            if deeplake.exists(str(path)):
                ds = deeplake.open(str(path))
                built = str(ds.metadata["model_name"]) if "model_name" in ds.metadata else ""
                if built != self._model_name:
                    raise StoreError(
                        f"memory dataset {path} was built with model {built!r}, not {self._model_name!r}:"
                        " move the memory folder aside (or erase it) to use another model"
                    )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                ds = deeplake.create(str(path))
                schema = {
                    **{c: types.Text() for c in _TEXT_COLUMNS}, "embedding": types.Embedding(self._dim),
                    "posted": types.Float64(), "image": types.Image(sample_compression="jpg"),
                    "width": types.Int32(), "height": types.Int32(),
                }
                for name, dtype in schema.items():
                    ds.add_column(name, dtype)
                ds.metadata["model_name"] = self._model_name
                ds.metadata["dim"] = self._dim
                ds.commit("Search All memory: new tenant")
            ds.indexing_mode = deeplake.IndexingMode.Off
            return ds
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(f"cannot open the memory dataset {path}: {exc}") from exc



