"""Which model names exist: the store's listing, kept in memory, so a name it
does not have is unknown without a store call.

A miss lists the store again at most once per `UNKNOWN_RELIST_SECONDS` (a
short negative cache), one listing at a time (the other misses wait for it):
random names cost a bounded number of store calls, and a model published a
moment ago is still found within seconds.
"""

from __future__ import annotations

import logging
import threading
import time

from ..server.async_mode import Concurrency
from .store import ModelStore, StoreUnavailable

log = logging.getLogger("webapp.models.registry")

#: How often a miss may list the store again.
UNKNOWN_RELIST_SECONDS = 2.0


class StoreNames:
    def __init__(self, store: ModelStore, concurrency: Concurrency, wait_timeout: float):
        self._store = store
        self._concurrency = concurrency
        self._wait_timeout = wait_timeout
        self._lock = threading.Lock()  # never held across a yield
        #: The names as last listed, when, whether that listing failed, and
        #: the event of a listing in progress.
        self._names: set[str] | None = None
        self._listed_at = float("-inf")
        self._failed = False
        self._relisting = None

    def __contains__(self, name: str) -> bool:
        """In the last listing (memory only)."""
        names = self._names
        return names is not None and name in names

    def add(self, names: set[str]) -> None:
        """Names seen in a listing made elsewhere (e.g. `GET /api/models`)."""
        with self._lock:
            self._names = (self._names or set()) | set(names)

    def discard(self, name: str) -> None:
        """A listed name the store turned out not to have (deleted since)."""
        with self._lock:
            if self._names is not None:
                self._names.discard(name)

    def listed(self, name: str) -> bool | None:
        """True if the store lists `name`, False if not, None if it cannot be listed."""
        waited = False
        while True:
            with self._lock:
                if self._names is not None and name in self._names:
                    return True
                verdict = None if self._failed else False
                if self._relisting is not None:
                    if waited:
                        return verdict
                    done, mine = self._relisting, False
                elif time.monotonic() - self._listed_at >= UNKNOWN_RELIST_SECONDS:
                    done = self._relisting = self._concurrency.event()
                    mine = True
                else:
                    return verdict
            if mine:
                self._relist(done)
            else:
                done.wait(self._wait_timeout)
            waited = True

    def _relist(self, done) -> None:
        try:
            names = self._concurrency.run_blocking(self._store.model_names)
        except StoreUnavailable as exc:
            log.warning("cannot list the model store: %s", exc)
            names = None
        except Exception:  # never leave the waiters of this listing hanging
            log.exception("listing the model store failed")
            names = None
        with self._lock:
            if names is not None:
                self._names = set(names)
            self._failed = names is None
            self._listed_at = time.monotonic()
            self._relisting = None
        done.set()
