"""Single-flight loading: each version of a model fetched, loaded and warmed
once however many clients ask, with progress told to the ones waiting; a
version that cannot be served is remembered by its fingerprint."""

from __future__ import annotations

import logging
import time

import numpy as np

from ..errors import BrokenVersion, ModelUnavailable, ServingError, UnknownModel
from ..server.memory import return_freed_memory
from .entry import LoadedModel, ModelEntry
from .modelspec import MetadataError, ModelSpec
from .runtime import RuntimeLoadError, load_runtime
from .store import PublishInProgress, StoredModel, StoreUnavailable

log = logging.getLogger("webapp.models.registry")

#: Seconds before a model that failed to load is tried again, doubling per failure.
RETRY_BACKOFF_START = 2.0
RETRY_BACKOFF_MAX = 300.0


class LoadingMixin:
    """Part of `ModelRegistry` (its `_entries`, `_lock`, store and cache): loading."""

    def _notify(self, entry: ModelEntry, state: str, progress: float) -> None:
        entry.state = state
        with self._lock:
            listeners = list(entry.listeners)
        for listener in listeners:
            try:
                listener(entry.name, state, progress)
            except Exception:  # a client that went away must not break the load
                log.debug("status listener failed", exc_info=True)

    def _load(self, entry: ModelEntry) -> None:
        started = time.perf_counter()
        try:
            stored = self._find(entry.name)
            if stored.fingerprint == entry.broken_fingerprint:
                raise entry.broken_error.fresh()  # the same broken files: nothing to try again
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

    def _fail(self, entry: ModelEntry, error: ServingError) -> None:
        with self._lock:
            entry.error = error.fresh()  # kept for later requests without this load's stack
            entry.loading = False
            entry.loading_key = None
            entry.failures += 1
            backoff = min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_START * 2 ** (entry.failures - 1))
            entry.retry_at = time.monotonic() + backoff
            if isinstance(error, UnknownModel):
                # Not an outage: forget it, so a model published later is found
                # (and a deleted one costs no store call per frame).
                self._entries.pop(entry.name, None)
                self._names.discard(entry.name)
        if not isinstance(error, UnknownModel):
            log.warning("model %s failed to load: %s", entry.name, error.message)
        self._notify(entry, "failed", 0.0)
        entry.done.set()

    def _find(self, name: str) -> StoredModel:
        try:
            stored = self._concurrency.run_blocking(self.store.find, name)
        except PublishInProgress:
            raise ModelUnavailable(f"Model '{name}' is being published; try again shortly.") from None
        except StoreUnavailable as exc:
            raise ModelUnavailable(f"The model store is unavailable: {exc}") from None
        if stored is None:
            raise UnknownModel.named(name)
        return stored

    def _build(self, entry: ModelEntry, stored: StoredModel, report: bool,
               key_attr: str = "loading_key") -> LoadedModel:
        """Fetch, load and warm one version of a model.

        Runs in a background task; each blocking step goes to a native thread.
        Status notifications are sent from here, between steps, because
        Socket.IO emits must not come from a native thread under eventlet.
        `key_attr` names the entry's attribute that keeps the version's cache
        key protected while it is built (`loading_key` for a load,
        `refresh_key` for a version check: each clears only its own).
        """
        name = entry.name
        run = self._concurrency.run_blocking
        setattr(entry, key_attr, f"{name}/{stored.fingerprint}")
        files = self._fetch(entry, stored, report)
        if files.stored != stored:  # replaced during the download: the store read the new set
            stored = files.stored
            setattr(entry, key_attr, f"{name}/{stored.fingerprint}")
        if report:
            self._notify(entry, "loading", 0.0)
        try:
            converted_dir = self.cache.converted_dir(files) if self.cache is not None else None
            runtime = run(load_runtime, files, self._settings, converted_dir)
        except RuntimeLoadError as exc:
            raise self._broken(entry, stored, BrokenVersion(f"Model '{name}' cannot be served: {exc}")) from None
        if self.cache is not None:  # a conversion just written counts within MODEL_CACHE_MAX_MB
            run(self.cache.make_room, 0, self.protected_cache_keys())
        try:
            spec = ModelSpec.build(name, stored.version, runtime.input_shape,
                                   runtime.output_units, files.metadata)
            # Warm-up: the first call traces the graph and allocates buffers;
            # pay that now, not on a client's first frame.
            run(runtime.predict, np.zeros((1, spec.height, spec.width, spec.channels), np.float32))
        except BaseException as exc:
            run(runtime.close)  # a version that will never serve must not hold its memory
            if isinstance(exc, MetadataError):
                raise self._broken(entry, stored, BrokenVersion(f"Model '{name}' cannot be served: {exc}")) from None
            if isinstance(exc, Exception):
                raise self._broken(entry, stored, BrokenVersion(
                    f"Model '{name}' cannot be served: its warm-up call failed: "
                    f"{type(exc).__name__}: {str(exc)[:300]}")) from None
            raise

        def release() -> None:  # once the retired version's last frame is answered
            run(runtime.close)
            run(return_freed_memory)
            log.info("model %s version %s released", name, spec.version)

        batcher = self._make_batcher(name, runtime.predict, getattr(runtime, "interpreters", 1), release,
                                     runs_on_caller=getattr(runtime, "runs_on_caller", False))
        return LoadedModel(spec=spec, runtime=runtime, batcher=batcher, stored=stored)

    @staticmethod
    def _broken(entry: ModelEntry, stored: StoredModel, error: BrokenVersion) -> BrokenVersion:
        """Remember that this version's files cannot be served (not a network
        or disk failure: those are tried again). Returns `error` to raise."""
        entry.broken_fingerprint, entry.broken_error = stored.fingerprint, error.fresh()
        return error

    def _fetch(self, entry: ModelEntry, stored: StoredModel, report: bool):
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
            return self._concurrency.run_blocking(self.store.fetch, stored, on_progress,
                                                  self.protected_cache_keys)
        except StoreUnavailable as exc:
            raise ModelUnavailable(f"Model '{entry.name}' could not be downloaded: {exc}") from None
        except MetadataError as exc:
            raise self._broken(entry, stored, BrokenVersion(
                f"Model '{entry.name}' has invalid metadata: {exc}")) from None
        except OSError as exc:  # e.g. a full disk in the cache directory
            raise ModelUnavailable(f"Model '{entry.name}' could not be stored locally: {exc.strerror or exc}") from None
        finally:
            fetching[0] = False
