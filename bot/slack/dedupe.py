"""Slack delivers an event again when it got no 2xx within 3 s (`X-Slack-Retry-Num`), with the
same `event_id`: remember the ids seen recently (a bounded set that forgets after a TTL) so that
each event is answered once."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

# Slack retries up to 3 times, the last about 5 minutes after the event.
DEFAULT_TTL_S = 15 * 60
DEFAULT_MAX_KEYS = 10_000


class RecentKeys:
    def __init__(
        self,
        ttl_s: float = DEFAULT_TTL_S,
        max_keys: int = DEFAULT_MAX_KEYS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self.clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # key -> when first seen, oldest first

    def first_time(self, key: str) -> bool:
        """True when `key` was not seen within the TTL; records it either way."""
        now = self.clock()
        while self._seen and (
            len(self._seen) >= self.max_keys or next(iter(self._seen.values())) <= now - self.ttl_s
        ):
            self._seen.popitem(last=False)
        if key in self._seen:
            return False
        self._seen[key] = now
        return True
