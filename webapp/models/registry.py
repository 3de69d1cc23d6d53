"""The model registry: which models exist, which are loaded, loading each once.

The registry sits between the store (files) and the data plane (frames). It
loads a model on first use, exactly once however many clients ask at the same
time, tells waiting clients how the load is going (`model_status`), warms the
model with a dummy batch, and hands out a `LoadedModel`: spec, runtime and
batcher as one object, so a frame always sees one consistent version.

It also keeps the set of loaded models within `MODEL_MEMORY_MB` (least
recently used unloaded first; they come back from the disk cache), checks
models in use for new versions every `MODEL_REFRESH_SECONDS` and swaps them in
atomically, and records recently used models so a restart loads them again.

One module per concern, combined here: `loading` (single flight), `residency`
(memory bound), `refresh` (new versions), `warmset`, `names` (which names
exist); `entry` holds what is kept per name.
"""

from __future__ import annotations

import logging
import threading
import time

from ..server.async_mode import Concurrency
from ..errors import ModelUnavailable, ServingError, UnknownModel
from .cache import DiskCache, recent
from .entry import Announcer, LoadedModel, MakeBatcher, ModelEntry, StatusListener
from .loading import RETRY_BACKOFF_MAX, RETRY_BACKOFF_START, LoadingMixin
from .modelspec import is_valid_model_name
from .names import UNKNOWN_RELIST_SECONDS, StoreNames
from .refresh import RefreshMixin
from .residency import ResidencyMixin
from .store import ModelStore, StoreUnavailable
from .warmset import WARM_SET_MAX_AGE, WarmSetMixin, kept_in_record

log = logging.getLogger("webapp.models.registry")

__all__ = ["Announcer", "LoadedModel", "ModelRegistry", "RETRY_BACKOFF_MAX", "RETRY_BACKOFF_START",
           "StatusListener", "UNKNOWN_RELIST_SECONDS", "WARM_SET_MAX_AGE"]


class ModelRegistry(LoadingMixin, ResidencyMixin, RefreshMixin, WarmSetMixin):
    def __init__(self, store: ModelStore, concurrency: Concurrency, settings: dict,
                 cache: DiskCache | None = None, *, make_batcher: MakeBatcher,
                 announce: Announcer = lambda model, payload: None):
        """`make_batcher(name, predict, workers, on_retired, runs_on_caller=...)` builds the queue a
        loaded version's frames go through (`webapp.frames.batching`);
        `announce(model, payload)` tells every client using a model (the
        Socket.IO layer). Both are passed in: models know nothing of frames or
        transports."""
        self.store = store
        self.cache = cache
        self._concurrency = concurrency
        self._max_batch = int(settings["MAX_BATCH"])
        self._load_timeout = float(settings["MODEL_LOAD_TIMEOUT"])
        self._memory_bytes = float(settings["MODEL_MEMORY_MB"]) * 1024 * 1024
        self._max_loaded = int(settings["MAX_LOADED_MODELS"])
        self._refresh = float(settings["MODEL_REFRESH_SECONDS"])
        self._warm_size = int(settings["WARM_SET_SIZE"])
        self._settings = settings
        #: Never unloaded for the memory bound: /readyz depends on it.
        self._pinned = {settings.get("DEFAULT_MODEL") or ""}
        self._entries: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()  # never held across a yield
        self._used: dict[str, float] = kept_in_record(cache.read_warm_set()) if cache else {}
        self._used_dirty = False
        #: The store's model names, so unknown ones cost no store call.
        self._names = StoreNames(store, concurrency, self._load_timeout)
        self.announce = announce
        self._make_batcher = make_batcher

    # -- serving -----------------------------------------------------------

    def acquire(self, name: str, on_status: StatusListener | None = None) -> LoadedModel:
        """The loaded model called `name`, loading it first if needed.

        Raises `UnknownModel` if the store has no such model and
        `ModelUnavailable` if it cannot be loaded (or not in time).
        """
        if not is_valid_model_name(name):
            raise UnknownModel.named(name)
        if name not in self._entries:
            self._check_listed(name)
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry.current is not None:
                self._touch(entry)
                return entry.current
            if entry is None:
                entry = self._entries[name] = ModelEntry(name)
            if entry.state == "failed" and not entry.loading and time.monotonic() < entry.retry_at:
                raise entry.error.fresh()
            if on_status is not None:
                entry.listeners.append(on_status)
            if not entry.loading:
                entry.loading = True
                entry.done = self._concurrency.event()
                self._concurrency.spawn(self._load, entry)
            done = entry.done
        try:
            finished = done.wait(self._load_timeout)
        finally:
            if on_status is not None:
                with self._lock:
                    if on_status in entry.listeners:
                        entry.listeners.remove(on_status)
        if entry.current is not None:
            self._touch(entry)
            return entry.current
        if not finished:
            raise ModelUnavailable(f"Model '{name}' is still loading; try again shortly.")
        if entry.error is not None:
            raise entry.error.fresh()
        raise ModelUnavailable(f"Model '{name}' could not be loaded.")

    # -- which names exist -----------------------------------------------------

    def known(self, name: str) -> bool:
        """Whether `name` is a model this server has (loaded, loading, failed)
        or saw in the store's listing. Memory only, never a store call: for
        labelling metrics, where every other name is `unknown`."""
        return name in self._entries or name in self._names

    def _check_listed(self, name: str) -> None:
        """Raise `UnknownModel` for a name the store does not list (see `names`)."""
        listed = self._names.listed(name)
        if listed is False:
            raise UnknownModel.named(name)
        if listed is None and not (self.cache is not None and self.cache.has(name)):
            raise ModelUnavailable("The model store is unavailable and this model is not cached here.")

    def start(self, preload) -> None:
        """Load the preload list and the warm set in the background, and start
        the maintenance loop (version checks, warm-set recording)."""
        warm = recent(self._used, self._warm_size, WARM_SET_MAX_AGE)
        names = [n for n in dict.fromkeys([*preload, *warm]) if n]
        if warm:
            log.info("warm set from the last run: %s", ", ".join(warm))
        for name in names:
            self._concurrency.spawn(self._preload_one, name, name not in preload)
        self._concurrency.spawn(self._maintenance_loop)

    def _preload_one(self, name: str, warm_only: bool = False) -> None:
        try:
            self.acquire(name)
        except UnknownModel as exc:
            if not warm_only:
                log.warning("preloading model %s failed: %s", name, exc.message)
                return
            # Deleted from the store (or another store, same cache): expected, not a fault.
            log.info("model %s from the warm set is no longer in the store; forgotten", name)
            self._forget_used(name)
        except ServingError as exc:
            log.warning("preloading model %s failed: %s", name, exc.message)

    # -- introspection -------------------------------------------------------

    def state_of(self, name: str) -> dict:
        """`state`: loaded, downloading, loading, failed, cached (on local
        disk, not in memory) or "in store" (only in the store)."""
        entry = self._entries.get(name)
        if entry is not None and entry.current is not None:
            return {"state": "loaded", "loaded": True}
        info = {"state": "in store", "loaded": False}
        if entry is not None and entry.loading and entry.state in ("downloading", "loading"):
            info["state"] = entry.state
        elif entry is not None and entry.state == "failed":
            info["state"] = "failed"
            if entry.error is not None:
                info["error"] = entry.error.message
        elif self.cache is not None and self.cache.has(name):
            info["state"] = "cached"
        return info

    def loaded_models(self) -> dict[str, LoadedModel]:
        return {e.name: e.current for e in list(self._entries.values()) if e.current is not None}

    def any_loaded(self) -> bool:
        return any(e.current is not None for e in list(self._entries.values()))

    def loaded(self, name: str) -> LoadedModel | None:
        entry = self._entries.get(name)
        return entry.current if entry is not None else None

    def list_models(self) -> list[dict]:
        """Every model in the store, without loading any (blocking I/O)."""
        try:
            stored_models = self.store.list_models()
        except StoreUnavailable as exc:
            raise ModelUnavailable(f"The model store is unavailable: {exc}") from None
        self._names.add({stored.name for stored in stored_models})
        return [self.summary(stored.name, stored.version) for stored in stored_models]

    def summary(self, name: str, stored_version: str | None = None) -> dict:
        """One model's list entry; input and labels are known once it has loaded."""
        loaded = self.loaded(name)
        state = self.state_of(name)
        item = {
            "name": name,
            "version": loaded.spec.version if loaded else stored_version,
            "loaded": loaded is not None,
            "state": state["state"],
            "input": None,
            "labels": None,
        }
        if loaded is not None:
            described = loaded.spec.describe()
            item.update(input=described["input"], labels=described["labels"],
                        runtime=loaded.runtime.name)
        return item

    def describe(self, name: str) -> dict:
        """One model's full details; loads the model if needed."""
        loaded = self.acquire(name)
        details = loaded.spec.describe()
        details.update(
            loaded=True,
            state="loaded",
            runtime=loaded.runtime.name,
            runtime_note=getattr(loaded.runtime, "fallback_reason", None),
            interpreters=getattr(loaded.runtime, "interpreters", 1),
            # Built so far: the second and later when calls first overlap.
            interpreters_made=getattr(loaded.runtime, "interpreters_made", 1),
            memory_bytes=loaded.runtime.memory_bytes,
            batching={"max_batch": self._max_batch, "calls": loaded.batcher.calls,
                      "failed_calls": loaded.batcher.failed_calls,
                      "mean_call_ms": round(loaded.batcher.mean_call_seconds * 1000, 3)},
        )
        return details
