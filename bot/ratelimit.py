"""A per-user rate limit for the chat bots: a token bucket per user key."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from core.errors import SearchAllError


class RateLimitedError(SearchAllError):
    """The user searched too often; `retry_after` seconds until the next search is allowed."""

    def __init__(self, retry_after: float):
        self.retry_after = retry_after
        super().__init__(f"you are searching too fast: try again in {math.ceil(retry_after)} s")


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`burst` searches at once per key, refilled at `per_minute`. `clock` is injectable for tests."""

    def __init__(self, per_minute: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000):
        self.rate = per_minute / 60.0
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def check(self, key: str) -> None:
        """Take one search from `key`'s bucket, or raise `RateLimitedError`."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens < 1.0:
            raise RateLimitedError((1.0 - bucket.tokens) / self.rate)
        bucket.tokens -= 1.0

    def _forget_full(self, now: float) -> None:
        """Drop buckets that have refilled completely (they hold no information)."""
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.updated) * self.rate >= self.burst]
        for key in full:
            del self._buckets[key]
