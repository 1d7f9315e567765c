"""Whether to build DeepLake's vector index after an ingest.

The store searches exactly in memory up to `[store] exact_max_rows` (faster than the index and
exact; see benchmarks/README.md), so the index only pays beyond that size, or
when `[store] search = "index"` forces the index path. Building it takes minutes at 1M rows, so
it is built only when rows were added.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from core.config import StoreSettings
from core.store.base import VectorStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexDecision:
    build: bool
    reason: str


def decide_index(rows: int, added: int, settings: StoreSettings) -> IndexDecision:
    if settings.search == "exact":
        return IndexDecision(False, "[store] search = 'exact': the index would never be used")
    if settings.search == "auto" and rows <= settings.exact_max_rows:
        return IndexDecision(
            False,
            f"{rows} rows <= [store] exact_max_rows ({settings.exact_max_rows}): exact search in"
            " memory is faster and exact",
        )
    why = "[store] search = 'index'" if settings.search == "index" else f"{rows} rows > exact_max_rows"
    if added == 0:
        return IndexDecision(False, f"{why}, but no rows were added: the index is as it was")
    return IndexDecision(True, f"{why}: building the vector index")


def refresh_index(store: VectorStore, added: int, settings: StoreSettings) -> IndexDecision:
    """Decide, log the decision, and build the index when it pays (and the store has one)."""
    decision = decide_index(store.info.rows, added, settings)
    build = getattr(store, "build_index", None)
    if decision.build and build is None:
        decision = IndexDecision(False, f"{type(store).__name__} has no vector index to build")
    log.info("vector index: %s", decision.reason)
    if decision.build:
        seconds = build()
        log.info("vector index built in %.1f s", seconds)
    return decision
