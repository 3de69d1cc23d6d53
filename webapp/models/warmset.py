"""The warm set: models used recently, recorded in the cache directory so a
restart loads them again in the background."""

from __future__ import annotations

import time

from .cache import recent
from .entry import ModelEntry

#: Models used within this many seconds are recorded in the warm set.
WARM_SET_MAX_AGE = 7 * 24 * 3600.0
#: The most names the record keeps (in memory and in `warm.json`): the most
#: recently used, within WARM_SET_MAX_AGE. It is WARM_SET_SIZE's upper bound,
#: so every setting finds its models there; without it, a store whose models
#: come and go over weeks would leave every name ever used in the record.
WARM_SET_RECORDED = 100


def kept_in_record(used: dict[str, float]) -> dict[str, float]:
    """The part of a warm-set record that is kept: WARM_SET_RECORDED names, used within WARM_SET_MAX_AGE."""
    return {name: used[name] for name in recent(used, WARM_SET_RECORDED, WARM_SET_MAX_AGE)}


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
            used = dict(self._used)  # a snapshot: frames may touch models meanwhile
            kept = kept_in_record(used)
            with self._lock:  # `_touch` may be recording a fresh use of one of them right now
                for name in used.keys() - kept.keys():
                    if self._used.get(name) == used[name]:
                        del self._used[name]
            self._concurrency.run_blocking(self.cache.write_warm_set, kept)

    def _forget_used(self, name: str) -> None:
        """Drop a recorded model the store no longer has: it is not loaded again after restarts."""
        if self._used.pop(name, None) is not None:
            self._used_dirty = True
