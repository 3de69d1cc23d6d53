"""The warm set: models used recently, recorded in the cache directory so a
restart loads them again in the background."""

from __future__ import annotations

import time

from .entry import ModelEntry

#: Models used within this many seconds are recorded in the warm set.
WARM_SET_MAX_AGE = 7 * 24 * 3600.0


class WarmSetMixin:
    """Part of `ModelRegistry` (its `_used` times and cache): the warm set."""

    def _touch(self, entry: ModelEntry) -> None:
        now = time.time()
        entry.last_used = now
        # The warm set only needs minute precision; don't dirty it per frame.
        if now - self._used.get(entry.name, 0.0) > 30.0:
            self._used[entry.name] = now
            self._used_dirty = True

    def _save_warm_set(self) -> None:
        if self.cache is not None and self._used_dirty:
            self._used_dirty = False
            self._concurrency.run_blocking(self.cache.write_warm_set, dict(self._used))
