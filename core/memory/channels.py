"""Which channels have memory on, since when and by whom, and how far their backfill came.

One SQLite file (`[memory] dir`/channels.sqlite), one row per channel ever turned on. Turning a
channel off keeps its row (with `on = 0`) so that `status` can still say what is remembered;
`forget` of the channel or tenant deletes the row. All methods are thread-safe and fast (called
from the event loop for `is_on`, which is answered from memory).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from core.memory.model import BackfillProgress, Tenant, check_id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    tenant TEXT NOT NULL, channel TEXT NOT NULL, is_on INTEGER NOT NULL, since REAL, by TEXT,
    backfill_wanted INTEGER, backfill_read INTEGER, backfill_indexed INTEGER,
    backfill_cursor TEXT, backfill_finished INTEGER, backfill_error TEXT,
    PRIMARY KEY (tenant, channel)
)
"""


class ChannelRegistry:
    """`path=None` keeps the registry in memory (tests)."""

    def __init__(self, path: Path | None, *, clock: Callable[[], float] = time.time) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:" if path is None else str(path), check_same_thread=False)
        with self._lock, self._db:
            self._db.execute(_SCHEMA)
            rows = self._db.execute("SELECT tenant, channel FROM channels WHERE is_on = 1").fetchall()
        self._on: set[tuple[str, str]] = {(t, c) for t, c in rows}

    def is_on(self, tenant: Tenant, channel: str) -> bool:
        return (tenant.key, channel) in self._on

    def channels_on(self, tenant: Tenant) -> set[str]:
        return {c for t, c in self._on if t == tenant.key}

    def known_channels(self, tenant: Tenant) -> set[str]:
        """Channels turned on at some time (on or off now): those that may hold memory."""
        with self._lock:
            rows = self._db.execute("SELECT channel FROM channels WHERE tenant = ?", (tenant.key,)).fetchall()
        return {c for (c,) in rows}

    def turn_on(self, tenant: Tenant, channel: str, by: str) -> None:
        """On from now (the original `since` is kept when it was on before)."""
        check_id(channel, "channel id")
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO channels (tenant, channel, is_on, since, by) VALUES (?, ?, 1, ?, ?)"
                " ON CONFLICT (tenant, channel) DO UPDATE SET is_on = 1,"
                " since = CASE WHEN is_on = 1 THEN since ELSE excluded.since END,"
                " by = CASE WHEN is_on = 1 THEN by ELSE excluded.by END",
                (tenant.key, channel, self._clock(), by),
            )
            self._on.add((tenant.key, channel))

    def turn_off(self, tenant: Tenant, channel: str) -> bool:
        """Off (what is remembered stays until forgotten); whether it was on."""
        with self._lock, self._db:
            self._db.execute(
                "UPDATE channels SET is_on = 0 WHERE tenant = ? AND channel = ?", (tenant.key, channel)
            )
            was_on = (tenant.key, channel) in self._on
            self._on.discard((tenant.key, channel))
        return was_on

    def since(self, tenant: Tenant, channel: str) -> tuple[float | None, str]:
        """When the channel was turned on and by whom ((None, "") when never)."""
        with self._lock:
            row = self._db.execute(
                "SELECT since, by FROM channels WHERE tenant = ? AND channel = ?", (tenant.key, channel)
            ).fetchone()
        return (None, "") if row is None else (row[0], row[1] or "")

    def start_backfill(self, tenant: Tenant, channel: str, wanted: int) -> BackfillProgress:
        """A new backfill of up to `wanted` messages, from the newest message backwards."""
        progress = BackfillProgress(wanted=wanted, read=0, indexed=0, cursor="", finished=wanted <= 0)
        self.save_backfill(tenant, channel, progress)
        return progress

    def save_backfill(self, tenant: Tenant, channel: str, progress: BackfillProgress) -> None:
        with self._lock, self._db:
            self._db.execute(
                "UPDATE channels SET backfill_wanted = ?, backfill_read = ?, backfill_indexed = ?,"
                " backfill_cursor = ?, backfill_finished = ?, backfill_error = ?"
                " WHERE tenant = ? AND channel = ?",
                (progress.wanted, progress.read, progress.indexed, progress.cursor, int(progress.finished),
                 progress.error, tenant.key, channel),
            )

    def backfill(self, tenant: Tenant, channel: str) -> BackfillProgress | None:
        with self._lock:
            row = self._db.execute(
                "SELECT backfill_wanted, backfill_read, backfill_indexed, backfill_cursor, backfill_finished,"
                " backfill_error FROM channels WHERE tenant = ? AND channel = ?", (tenant.key, channel)
            ).fetchone()
        if row is None or row[0] is None:
            return None
        return BackfillProgress(wanted=int(row[0]), read=int(row[1]), indexed=int(row[2]), cursor=row[3] or "",
                                finished=bool(row[4]), error=row[5] or "")

    def unfinished_backfills(self) -> list[tuple[Tenant, str, BackfillProgress]]:
        """Backfills of channels still on that did not finish (to resume after a restart)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT tenant, channel FROM channels WHERE is_on = 1 AND backfill_wanted IS NOT NULL"
                " AND backfill_finished = 0"
            ).fetchall()
        out = []
        for key, channel in rows:
            platform, _, tenant_id = key.partition("-")
            tenant = Tenant(platform, tenant_id)  # type: ignore[arg-type]
            progress = self.backfill(tenant, channel)
            if progress is not None:
                out.append((tenant, channel, progress))
        return out

    def forget_channel(self, tenant: Tenant, channel: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM channels WHERE tenant = ? AND channel = ?", (tenant.key, channel))
            self._on.discard((tenant.key, channel))

    def forget_tenant(self, tenant: Tenant) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM channels WHERE tenant = ?", (tenant.key,))
            self._on = {(t, c) for t, c in self._on if t != tenant.key}

    def close(self) -> None:
        with self._lock:
            self._db.close()
