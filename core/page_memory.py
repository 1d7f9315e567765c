"""What a "Next page" or "More like this" button needs to find its query again, after restarts.

A chat button carries a short key (Discord allows 100 characters in a custom id), not the query:
an image or a voice note does not fit. The fused query vector, its filters and what to show are
kept in a small SQLite file under the key (a hash of what is stored, so the same search reuses
one entry) and forgotten after `max_age_days`. `path=None` keeps them in memory (tests).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import BadInputError


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

    def key(self) -> str:
        digest = hashlib.sha256(np.asarray(self.vector, dtype=np.float32).tobytes())
        digest.update(json.dumps([self.include, self.exclude, self.limit, self.cutoff]).encode())
        return digest.hexdigest()[:20]


class PageMemory:
    def __init__(self, path: Path | None, *, max_age_days: float = 7.0):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._max_age_s = max_age_days * 86400
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
            self._db.execute("DELETE FROM queries WHERE created < ?", (time.time() - self._max_age_s,))

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
            }
        )
        vector = np.asarray(query.vector, dtype=np.float32).tobytes()
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO queries VALUES (?, ?, ?, ?)", (key, time.time(), body, vector)
            )
        return key

    def load(self, key: str) -> SavedQuery:
        with self._lock:
            row = self._db.execute(
                "SELECT body, vector FROM queries WHERE key = ? AND created >= ?",
                (key, time.time() - self._max_age_s),
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
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()
