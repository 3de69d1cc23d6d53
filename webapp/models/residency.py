"""Memory residency: the loaded models kept within MODEL_MEMORY_MB and
MAX_LOADED_MODELS, least recently used unloaded first; what must stay on disk."""

from __future__ import annotations

import logging

log = logging.getLogger("webapp.models.registry")


class ResidencyMixin:
    """Part of `ModelRegistry` (its `_entries` and `_lock`): the memory bound."""

    def _enforce_memory_bound(self, keep: str) -> None:
        """Unload least recently used models until the loaded set fits."""
        with self._lock:
            loaded = sorted((e for e in self._entries.values() if e.current is not None),
                            key=lambda e: e.last_used)
            total = sum(e.current.runtime.memory_bytes for e in loaded)
            count = len(loaded)
            victims = []
            for entry in loaded:
                over_memory = total > self._memory_bytes
                over_count = self._max_loaded and count > self._max_loaded
                if not (over_memory or over_count):
                    break
                if entry.name == keep or entry.name in self._pinned or entry.current.batcher.depth:
                    continue  # the model just asked for, the default one, or one with frames waiting
                victims.append((entry, entry.current))
                total -= entry.current.runtime.memory_bytes
                count -= 1
                entry.current = None
                entry.state = "unloaded"
        for entry, model in victims:
            model.batcher.close()
            log.info("unloaded model %s version %s (%.1f MB) to stay within the memory bound",
                     entry.name, model.spec.version, model.runtime.memory_bytes / 1e6)

    def protected_cache_keys(self) -> set[str]:
        """Cache entries that must stay on disk: loaded or being loaded."""
        with self._lock:
            keys = {e.current.cache_key for e in self._entries.values() if e.current is not None}
            keys |= {e.loading_key for e in self._entries.values() if e.loading_key}
            keys |= {e.refresh_key for e in self._entries.values() if e.refresh_key}
        return keys
