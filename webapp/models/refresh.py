"""Version refresh: models in use checked every MODEL_REFRESH_SECONDS, a new
version loaded in the background and swapped in atomically; the old one
answers its queued frames and is then released."""

from __future__ import annotations

import logging
import time

from ..errors import BrokenVersion, ServingError
from .entry import ModelEntry
from .store import PublishInProgress, StoreUnavailable

log = logging.getLogger("webapp.models.registry")


class RefreshMixin:
    """Part of `ModelRegistry` (its `_entries`, store and loading): new versions."""

    def _maintenance_loop(self) -> None:
        tick = max(0.25, min(self._refresh / 4.0, 5.0))
        while True:
            self._concurrency.sleep(tick)
            try:
                self._check_versions()
                self._save_warm_set()
            except Exception:
                log.exception("model maintenance failed")

    def _check_versions(self) -> None:
        now = time.monotonic()
        in_use_window = max(2 * self._refresh, 30.0)
        for entry in list(self._entries.values()):
            if (entry.current is not None and not entry.updating
                    and time.time() - entry.last_used <= in_use_window
                    and now - entry.checked_at >= self._refresh):
                entry.updating = True
                self._concurrency.spawn(self._revalidate, entry)

    def revalidate(self, name: str) -> None:
        """Check `name` for a new version now (e.g. after a publish)."""
        entry = self._entries.get(name)
        if entry is not None and entry.current is not None and not entry.updating:
            entry.updating = True
            self._concurrency.spawn(self._revalidate, entry)

    def _revalidate(self, entry: ModelEntry) -> None:
        try:
            current = entry.current
            if current is None:
                return
            try:
                stored = self._concurrency.run_blocking(self.store.find, entry.name)
            except PublishInProgress as exc:
                log.info("model %s: %s; still serving %s", entry.name, exc, current.spec.version)
                return
            except StoreUnavailable as exc:
                log.warning("cannot check model %s for updates: %s", entry.name, exc)
                return
            finally:
                entry.checked_at = time.monotonic()
            if stored is None or stored.fingerprint == current.stored.fingerprint:
                return
            if stored.fingerprint == entry.broken_fingerprint:
                return  # already tried and announced: wait for the next version
            log.info("model %s: new version %s in the store (serving %s)", entry.name,
                     stored.version, current.spec.version)
            try:
                fresh = self._build(entry, stored, report=False, key_attr="refresh_key")
            except ServingError as exc:
                if not isinstance(exc, BrokenVersion):  # the store or the disk, not the files: tried again
                    log.warning("model %s: new version %s could not be loaded now, still serving %s: %s",
                                entry.name, stored.version, current.spec.version, exc.message)
                    return
                log.warning("model %s: new version %s failed to load, still serving %s: %s",
                            entry.name, stored.version, current.spec.version, exc.message)
                self.announce(entry.name, {"model": entry.name, "state": "failed", "progress": 0.0,
                                           "version": stored.version, "serving": current.spec.version,
                                           "message": exc.message})
                return
            finally:
                entry.refresh_key = None  # its own key: a load running meanwhile keeps its own
            with self._lock:
                # Swap only what was checked: if the model was unloaded meanwhile
                # (memory bound) it stays unloaded, and a version a load brought
                # back in the meantime is not overwritten (and leaked).
                # (Nor the same set again: the store may hand back the version
                # serving when the new one was replaced mid-download.)
                swapped = entry.current is current and fresh.stored.fingerprint != current.stored.fingerprint
                if swapped:
                    entry.current = fresh
            if not swapped:
                fresh.batcher.close()  # never served: its runtime is released at once
                log.info("model %s: version %s not swapped in (unloaded meanwhile, or the version serving)",
                         entry.name, fresh.spec.version)
                return
            # Frames already queued finish on the old version; new ones see the new.
            current.batcher.close()
            log.info("model %s updated to version %s", entry.name, fresh.spec.version)
            self.announce(entry.name, {"model": entry.name, "state": "updated", "progress": 1.0,
                                       "version": fresh.spec.version})
            self._enforce_memory_bound(keep=entry.name)
        finally:
            entry.updating = False
