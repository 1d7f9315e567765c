"""Whether to bring the search index up to date after an ingest, and doing it.

The store searches exactly in memory up to `[store] exact_max_rows` (exact, and fast enough
there; see benchmarks/README.md, store), so the approximate index (`core.store.ann`) is kept
only beyond that size, or when `[store] search = "index"` forces it. Keeping it is cheap
when it is up to date: the rows appended since it was saved are added and it is saved again;
a missing or stale index is built (minutes at 1M rows).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from core.config import StoreSettings
from core.store.base import VectorStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexDecision:
    build: bool  # whether the index was (to be) brought up to date
    reason: str


def decide_index(rows: int, settings: StoreSettings) -> IndexDecision:
    if settings.search == "exact":
        return IndexDecision(False, "[store] search = 'exact': the index would never be used")
    if settings.search == "auto" and rows <= settings.exact_max_rows:
        return IndexDecision(
            False,
            f"{rows} rows <= [store] exact_max_rows ({settings.exact_max_rows}): exact search in"
            " memory is fast enough and exact",
        )
    why = "[store] search = 'index'" if settings.search == "index" else f"{rows} rows > exact_max_rows"
    return IndexDecision(True, f"{why}: building the vector index, or adding the new rows to it")


def refresh_index(store: VectorStore, settings: StoreSettings) -> IndexDecision:
    """Decide, log the decision, and bring the index up to date when it is used (and the
    store has one)."""
    decision = decide_index(store.info.rows, settings)
    update = getattr(store, "update_index", None)
    if decision.build and update is None:
        decision = IndexDecision(False, f"{type(store).__name__} has no vector index to build")
    log.info("vector index: %s", decision.reason)
    if decision.build:
        what, seconds = update()
        log.info("vector index %s (%.1f s)", what, seconds)
    return decision
