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


@dataclass(frozen=True, eq=False)
class _Snapshot:
    """A tenant's rows as last committed; never changed once made (a write makes a new one)."""

    unit: np.ndarray  # [n, dim] unit rows
    ids: list[str]
    codes: np.ndarray  # [n] int32: index into `channels`
    channels: list[str]
    lowered: list[str]
    texts: list[str]
    messages: list[str]
    items: list[str]
    authors: list[str]
    posted: np.ndarray  # [n] float64
    links: list[str]
    sizes: np.ndarray  # [n, 2] int32

    @property
    def n(self) -> int:
        return len(self.ids)

    def rows_where(self, *, channel: str | None, message: str | None, author: str | None,
                   items: Collection[str] | None) -> list[int]:
        code = self.channels.index(channel) if channel is not None and channel in self.channels else None
        if channel is not None and code is None:
            return []
        out = []
        for row in range(self.n):
            if code is not None and self.codes[row] != code:
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

        def pick(values: list[Any]) -> list[Any]:
            return [values[i] for i in idx]

        return _Snapshot(
            unit=self.unit[idx], ids=pick(self.ids), codes=self.codes[idx], channels=self.channels,
            lowered=pick(self.lowered), texts=pick(self.texts), messages=pick(self.messages),
            items=pick(self.items), authors=pick(self.authors), posted=self.posted[idx],
            links=pick(self.links), sizes=self.sizes[idx],
        )

    def plus(self, records: Sequence[MemoryRecord], unit: np.ndarray) -> _Snapshot:
        channels = list(self.channels)
        for rec in records:
            if rec.channel not in channels:
                channels.append(rec.channel)
        codes = np.array([channels.index(r.channel) for r in records], dtype=np.int32)
        return _Snapshot(
            unit=np.concatenate([self.unit, unit]), ids=self.ids + [r.id for r in records],
            codes=np.concatenate([self.codes, codes]), channels=channels,
            lowered=self.lowered + [r.text.lower() for r in records], texts=self.texts + [r.text for r in records],
            messages=self.messages + [r.message for r in records], items=self.items + [r.item for r in records],
            authors=self.authors + [r.author for r in records],
            posted=np.concatenate([self.posted, np.array([r.posted_at for r in records], dtype=np.float64)]),
            links=self.links + [r.link for r in records],
            sizes=np.concatenate([self.sizes, np.array([[r.width, r.height] for r in records],
                                                       dtype=np.int32).reshape(-1, 2)]),
        )

    def meta(self, tenant: Tenant, row: int) -> MemoryMeta:
        return MemoryMeta(tenant=tenant, channel=self.channels[int(self.codes[row])], message=self.messages[row],
                          item=self.items[row], author=self.authors[row], posted_at=float(self.posted[row]),
                          link=self.links[row])


def _empty_snapshot(dim: int) -> _Snapshot:
    return _Snapshot(unit=np.empty((0, dim), np.float32), ids=[], codes=np.empty(0, np.int32), channels=[],
                     lowered=[], texts=[], messages=[], items=[], authors=[], posted=np.empty(0, np.float64),
                     links=[], sizes=np.empty((0, 2), np.int32))


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
            unit=unit_rows(np.asarray(ds["embedding"][:n])), ids=cols["id"],
            codes=np.array([code_of[c] for c in cols["channel"]], np.int32), channels=channels,
            lowered=[t.lower() for t in cols["text"]], texts=cols["text"], messages=cols["message"],
            items=cols["item"], authors=cols["author"], posted=np.asarray(ds["posted"][:n], np.float64),
            links=cols["link"], sizes=sizes,
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
            mask &= np.fromiter((text_passes(t, inc, exc) for t in snap.lowered), bool, count=snap.n)
        rows = np.flatnonzero(mask)
        # Gathering rows costs about as much as multiplying them: gather only when few pass.
        scores = snap.unit[rows] @ q if len(rows) * 2 < snap.n else (snap.unit @ q)[rows]
        top = top_indices(scores, offset + k)[offset:]
        picked = rows[top]
        hits = [
            MemoryHit(
                id=snap.ids[row], score=float(scores[i]), text=snap.texts[row], source=f"memory:{tenant.key}",
                s3_key="", width=int(snap.sizes[row, 0]), height=int(snap.sizes[row, 1]), row=-1,
                meta=snap.meta(tenant, row),
            )
            for row, i in zip(picked.tolist(), top.tolist(), strict=True)
        ]
        return hits, np.array(snap.unit[picked], dtype=np.float32)

    def embedding(self, tenant: Tenant, id: str) -> tuple[np.ndarray, MemoryMeta]:
        """The stored (unit) embedding of image `id` and where it was posted; KeyError when unknown."""
        snap = self._snapshot(tenant)
        if snap is None or id not in snap.ids:
            raise KeyError(id)
        row = snap.ids.index(id)
        return np.array(snap.unit[row]), snap.meta(tenant, row)

    def image(self, tenant: Tenant, id: str) -> bytes | None:
        """The thumbnail of image `id` (a JPEG without metadata); None when it is not remembered."""
        data = self._data(tenant, create=False)
        if data is None:
            return None
        with data.lock:
            snap = data.snapshot
            if id not in snap.ids:
                return None
            blob = bytes(data.ds["image"].get_bytes(snap.ids.index(id)))
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
            seen = set(snap.ids)
            fresh = []
            for rec in records:
                if rec.id not in seen:
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



