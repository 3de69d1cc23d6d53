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
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .cache import DiskCache, recent
from .concurrency import Concurrency
from .errors import ModelUnavailable, ServingError, UnknownModel
from .modelspec import MetadataError, ModelSpec, is_valid_model_name
from .runtime import RuntimeLoadError, load_runtime
from .scheduler import ModelBatcher
from .store import ModelStore, StoredModel, StoreUnavailable

log = logging.getLogger(__name__)

#: Called as listener(model_name, state, progress) while a model loads.
StatusListener = Callable[[str, str, float], None]
#: Called as announce(model_name, payload) for news every user of a model should get.
Announcer = Callable[[str, dict], None]

#: Seconds before a model that failed to load is tried again, doubling per failure.
RETRY_BACKOFF_START = 2.0
RETRY_BACKOFF_MAX = 300.0
#: Models used within this many seconds are recorded in the warm set.
WARM_SET_MAX_AGE = 7 * 24 * 3600.0


@dataclass
class LoadedModel:
    spec: ModelSpec
    runtime: object
    batcher: ModelBatcher
    stored: StoredModel
    loaded_at: float = field(default_factory=time.time)

    @property
    def cache_key(self) -> str:
        return f"{self.stored.name}/{self.stored.fingerprint}"


class _Entry:
    """Book-keeping for one model name."""

    def __init__(self, name: str):
        self.name = name
        self.state = "unloaded"  # unloaded | downloading | loading | ready | failed
        self.current: LoadedModel | None = None
        self.error: ServingError | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.loading = False
        self.loading_key: str | None = None
        self.updating = False
        self.progress = 0.0
        self.done = None  # event set when the load in progress ends
        self.listeners: list[StatusListener] = []
        self.last_used = 0.0
        self.checked_at = 0.0


class ModelRegistry:
    def __init__(self, store: ModelStore, concurrency: Concurrency, settings: dict,
                 cache: DiskCache | None = None):
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
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()  # never held across a yield
        self._used: dict[str, float] = cache.read_warm_set() if cache else {}
        self._used_dirty = False
        #: Set by the Socket.IO layer: tells every client using a model.
        self.announce: Announcer = lambda model, payload: None
        if hasattr(store, "protected"):
            store.protected = self.protected_cache_keys

    # -- serving -----------------------------------------------------------

    def acquire(self, name: str, on_status: StatusListener | None = None) -> LoadedModel:
        """The loaded model called `name`, loading it first if needed.

        Raises `UnknownModel` if the store has no such model and
        `ModelUnavailable` if it cannot be loaded (or not in time).
        """
        if not is_valid_model_name(name):
            raise UnknownModel(f"There is no model called {str(name)[:80]!r}.")
        with self._lock:
            entry = self._entries.get(name)
            if entry is not None and entry.current is not None:
                self._touch(entry)
                return entry.current
            if entry is None:
                entry = self._entries[name] = _Entry(name)
            if entry.state == "failed" and not entry.loading and time.monotonic() < entry.retry_at:
                raise entry.error
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
        raise entry.error or ModelUnavailable(f"Model '{name}' could not be loaded.")

    def _touch(self, entry: _Entry) -> None:
        now = time.time()
        entry.last_used = now
        # The warm set only needs minute precision; don't dirty it per frame.
        if now - self._used.get(entry.name, 0.0) > 30.0:
            self._used[entry.name] = now
            self._used_dirty = True

    def start(self, preload) -> None:
        """Load the preload list and the warm set in the background, and start
        the maintenance loop (version checks, warm-set recording)."""
        warm = recent(self._used, self._warm_size, WARM_SET_MAX_AGE)
        names = [n for n in dict.fromkeys([*preload, *warm]) if n]
        if warm:
            log.info("warm set from the last run: %s", ", ".join(warm))
        for name in names:
            self._concurrency.spawn(self._preload_one, name)
        self._concurrency.spawn(self._maintenance_loop)

    def _preload_one(self, name: str) -> None:
        try:
            self.acquire(name)
        except ServingError as exc:
            log.warning("preloading model %s failed: %s", name, exc.message)

    # -- loading -----------------------------------------------------------

    def _notify(self, entry: _Entry, state: str, progress: float) -> None:
        entry.state = state
        with self._lock:
            listeners = list(entry.listeners)
        for listener in listeners:
            try:
                listener(entry.name, state, progress)
            except Exception:  # a client that went away must not break the load
                log.debug("status listener failed", exc_info=True)

    def _load(self, entry: _Entry) -> None:
        started = time.perf_counter()
        try:
            stored = self._find(entry.name)
            loaded = self._build(entry, stored, report=True)
        except ServingError as exc:
            self._fail(entry, exc)
            return
        except Exception as exc:  # never leave waiters hanging
            log.exception("loading model %s crashed", entry.name)
            self._fail(entry, ModelUnavailable(f"Model '{entry.name}' could not be loaded: {type(exc).__name__}."))
            return
        with self._lock:
            entry.current = loaded
            entry.error = None
            entry.failures = 0
            entry.loading = False
            entry.loading_key = None
            entry.checked_at = time.monotonic()
        self._touch(entry)
        log.info("model %s version %s loaded (%s, %.1f MB) in %.2fs",
                 entry.name, loaded.spec.version, loaded.runtime.name,
                 loaded.runtime.memory_bytes / 1e6, time.perf_counter() - started)
        self._notify(entry, "ready", 1.0)
        entry.done.set()
        self._enforce_memory_bound(keep=entry.name)

    def _fail(self, entry: _Entry, error: ServingError) -> None:
        with self._lock:
            entry.error = error
            entry.loading = False
            entry.loading_key = None
            entry.failures += 1
            backoff = min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_START * 2 ** (entry.failures - 1))
            entry.retry_at = time.monotonic() + backoff
            if isinstance(error, UnknownModel):
                # Not an outage: forget it, so a model published later is found.
                self._entries.pop(entry.name, None)
        if not isinstance(error, UnknownModel):
            log.warning("model %s failed to load: %s", entry.name, error.message)
        self._notify(entry, "failed", 0.0)
        entry.done.set()

    def _find(self, name: str) -> StoredModel:
        try:
            stored = self._concurrency.run_blocking(self.store.find, name)
        except StoreUnavailable as exc:
            raise ModelUnavailable(f"The model store is unavailable: {exc}") from None
        if stored is None:
            raise UnknownModel(f"There is no model called '{name}'.")
        return stored

    def _build(self, entry: _Entry, stored: StoredModel, report: bool) -> LoadedModel:
        """Fetch, load and warm one version of a model.

        Runs in a background task; each blocking step goes to a native thread.
        Status notifications are sent from here, between steps, because
        Socket.IO emits must not come from a native thread under eventlet.
        """
        name = entry.name
        run = self._concurrency.run_blocking
        entry.loading_key = f"{name}/{stored.fingerprint}"
        files = self._fetch(entry, stored, report)
        if report:
            self._notify(entry, "loading", 0.0)
        try:
            converted_dir = self.cache.converted_dir(files) if self.cache is not None else None
            runtime = run(load_runtime, files, self._settings, converted_dir)
            spec = ModelSpec.build(name, stored.version, runtime.input_shape,
                                   runtime.output_units, files.metadata)
        except (RuntimeLoadError, MetadataError) as exc:
            raise ModelUnavailable(f"Model '{name}' cannot be served: {exc}") from None
        # Warm-up: the first call traces the graph and allocates buffers;
        # pay that now, not on a client's first frame.
        run(runtime.predict, np.zeros((1, spec.height, spec.width, spec.channels), np.float32))
        batcher = ModelBatcher(name, runtime.predict, self._concurrency, self._max_batch,
                               workers=getattr(runtime, "interpreters", 1))
        return LoadedModel(spec=spec, runtime=runtime, batcher=batcher, stored=stored)

    def _fetch(self, entry: _Entry, stored: StoredModel, report: bool):
        """Download (or find in the cache) while reporting progress to waiters."""
        entry.progress = 0.0
        if report:
            self._notify(entry, "downloading", 0.0)
        fetching = [True]

        def on_progress(fraction: float) -> None:  # called on the native thread
            entry.progress = fraction

        def report_progress() -> None:  # a background task, so emits are safe
            last = 0.0
            while fetching[0]:
                if entry.progress != last:
                    last = entry.progress
                    if fetching[0]:
                        self._notify(entry, "downloading", last)
                self._concurrency.sleep(0.2)

        if report:
            self._concurrency.spawn(report_progress)
        try:
            return self._concurrency.run_blocking(self.store.fetch, stored, on_progress)
        except StoreUnavailable as exc:
            raise ModelUnavailable(f"Model '{entry.name}' could not be downloaded: {exc}") from None
        except MetadataError as exc:
            raise ModelUnavailable(f"Model '{entry.name}' has invalid metadata: {exc}") from None
        except OSError as exc:  # e.g. a full disk in the cache directory
            raise ModelUnavailable(f"Model '{entry.name}' could not be stored locally: {exc.strerror or exc}") from None
        finally:
            fetching[0] = False

    # -- memory bound --------------------------------------------------------

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
        return keys

    # -- new versions --------------------------------------------------------

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

    def _revalidate(self, entry: _Entry) -> None:
        try:
            current = entry.current
            if current is None:
                return
            try:
                stored = self._concurrency.run_blocking(self.store.find, entry.name)
            except StoreUnavailable as exc:
                log.warning("cannot check model %s for updates: %s", entry.name, exc)
                return
            finally:
                entry.checked_at = time.monotonic()
            if stored is None or stored.fingerprint == current.stored.fingerprint:
                return
            log.info("model %s: new version %s in the store (serving %s)", entry.name,
                     stored.version, current.spec.version)
            try:
                fresh = self._build(entry, stored, report=False)
            except ServingError as exc:
                log.warning("model %s: new version %s failed to load, still serving %s: %s",
                            entry.name, stored.version, current.spec.version, exc.message)
                self.announce(entry.name, {"model": entry.name, "state": "failed", "progress": 0.0,
                                           "version": stored.version, "serving": current.spec.version,
                                           "message": exc.message})
                return
            finally:
                entry.loading_key = None
            with self._lock:
                entry.current = fresh
            # Frames already queued finish on the old version; new ones see the new.
            current.batcher.close()
            log.info("model %s updated to version %s", entry.name, fresh.spec.version)
            self.announce(entry.name, {"model": entry.name, "state": "updated", "progress": 1.0,
                                       "version": fresh.spec.version})
            self._enforce_memory_bound(keep=entry.name)
        finally:
            entry.updating = False

    def _save_warm_set(self) -> None:
        if self.cache is not None and self._used_dirty:
            self._used_dirty = False
            self._concurrency.run_blocking(self.cache.write_warm_set, dict(self._used))

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
            memory_bytes=loaded.runtime.memory_bytes,
            batching={"max_batch": self._max_batch, "calls": loaded.batcher.calls,
                      "mean_call_ms": round(loaded.batcher.mean_call_seconds * 1000, 3)},
        )
        return details
