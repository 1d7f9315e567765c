"""What a "Next page" or "More like this" button needs to find its query again, after restarts.

A chat button carries a short key (Discord allows 100 characters in a custom id), not the query:
an image or a voice note does not fit. The fused query vector, its filters and what to show are
kept in a small SQLite file under the key (a hash of what is stored, so the same search reuses
one entry) and forgotten after `max_age_days`. `path=None` keeps them in memory (tests).

Each distinct search adds an entry (about 9 KB with a 1024-d vector), so the file is pruned as
it goes, not only when opened: every `prune_every` saves, expired entries are deleted and only
the newest `max_entries` kept. SQLite reuses the freed pages, so the file stops growing at about
`max_entries` entries (10,000: some 90 MB); a button of a pruned search says "search again".
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import BadInputError
from core.memory.model import COLLECTION, SearchScope, Tenant


class ExpiredPageError(BadInputError):
    """A button whose query is no longer remembered."""


@dataclass(frozen=True, eq=False)
class SavedQuery:
    vector: np.ndarray  # fused, unit length, float32
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    limit: int
    description: str
    heard: str
    cutoff: float
    scope: SearchScope = COLLECTION  # what the search may see (channel memory: tenant, channels)

    def key(self) -> str:
        digest = hashlib.sha256(np.asarray(self.vector, dtype=np.float32).tobytes())
        digest.update(json.dumps([self.include, self.exclude, self.limit, self.cutoff]).encode())
        if self.scope != COLLECTION:
            digest.update(json.dumps(_scope_json(self.scope), sort_keys=True).encode())
        return digest.hexdigest()[:20]


def _scope_json(scope: SearchScope) -> dict | None:
    if scope == COLLECTION:
        return None
    tenant = scope.tenant
    return {
        "source": scope.source,
        "tenant": None if tenant is None else [tenant.platform, tenant.id],
        "channels": None if scope.channels is None else sorted(scope.channels),
    }


def _scope_of(data: dict | None) -> SearchScope:
    if not data:
        return COLLECTION
    tenant = None if data["tenant"] is None else Tenant(data["tenant"][0], data["tenant"][1])
    channels = None if data["channels"] is None else frozenset(data["channels"])
    return SearchScope(data["source"], tenant, channels)


MAX_ENTRIES = 10_000
PRUNE_EVERY = 100


class PageMemory:
    def __init__(
        self,
        path: Path | None,
        *,
        max_age_days: float = 7.0,
        max_entries: int = MAX_ENTRIES,
        prune_every: int = PRUNE_EVERY,
        clock: Callable[[], float] = time.time,
    ):
        """`clock` (seconds, like `time.time`) dates entries; tests pass their own."""
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._max_age_s = max_age_days * 86400
        self._max_entries = max(1, max_entries)
        self._prune_every = max(1, prune_every)
        self._clock = clock
        self._saves = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:" if path is None else str(path), check_same_thread=False)
        if path is not None:
            # Every search saves its page: a write-ahead log without an fsync per commit makes a
            # save far cheaper (benchmarks/README.md, query path). A crash of the machine may
            # lose the last pages, never the file.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        with self._lock, self._db:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS queries (key TEXT PRIMARY KEY, created REAL, body TEXT,"
                " vector BLOB)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS queries_created ON queries (created)")
            self._prune()

    def _prune(self) -> None:
        """(under the lock, in a transaction) Forget expired entries and all but the newest."""
        self._db.execute("DELETE FROM queries WHERE created < ?", (self._clock() - self._max_age_s,))
        self._db.execute(
            "DELETE FROM queries WHERE key NOT IN"
            " (SELECT key FROM queries ORDER BY created DESC, rowid DESC LIMIT ?)",
            (self._max_entries,),
        )

    def save(self, query: SavedQuery) -> str:
        key = query.key()
        body = json.dumps(
            {
                "include": query.include,
                "exclude": query.exclude,
                "limit": query.limit,
                "description": query.description,
                "heard": query.heard,
                "cutoff": query.cutoff,
                "scope": _scope_json(query.scope),
            }
        )
        vector = np.asarray(query.vector, dtype=np.float32).tobytes()
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO queries VALUES (?, ?, ?, ?)", (key, self._clock(), body, vector)
            )
            self._saves += 1
            if self._saves % self._prune_every == 0:
                self._prune()
        return key

    def load(self, key: str) -> SavedQuery:
        with self._lock:
            row = self._db.execute(
                "SELECT body, vector FROM queries WHERE key = ? AND created >= ?",
                (key, self._clock() - self._max_age_s),
            ).fetchone()
        if row is None:
            raise ExpiredPageError("this result list has expired: please search again")
        body = json.loads(row[0])
        return SavedQuery(
            vector=np.frombuffer(row[1], dtype=np.float32).copy(),
            include=tuple(body["include"]),
            exclude=tuple(body["exclude"]),
            limit=int(body["limit"]),
            description=body["description"],
            heard=body["heard"],
            cutoff=float(body["cutoff"]),
            scope=_scope_of(body.get("scope")),
        )

    def entries(self) -> int:
        """Entries held (expired ones included until the next prune)."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM queries").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
