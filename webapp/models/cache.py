"""The bounded local disk cache of models downloaded from a remote store.

Layout under ``MODEL_CACHE_DIR``::

    entries/<name>/<fingerprint>/   model.keras | model.h5, metadata files, stored.json
                                    (and model.tflite once converted here)
    converted/<name>/<fingerprint>/ LiteRT conversions of models from a local store
    staging/<process>/<random>/     one process's downloads in progress (never served)
    staging/<process>.lock          held by that process while it lives
    locks/<name>.lock               held by the process downloading <name>
    trash/<random>/                 evicted directories being deleted
    warm.json                       models used recently, loaded again at start-up

Several processes may share the directory (the default is per user), and any
of them may be killed at any moment:

* a download is written into the process's own ``staging/`` directory and,
  once every file is complete and checked, renamed into ``entries/`` in one
  atomic step: a partial model is never visible under its final name;
* a process downloads a model only while holding ``locks/<name>.lock``
  (`filelock`, an OS lock the kernel drops when the process dies), and looks
  in the cache again once it has it: processes started together download once;
* eviction renames the directory into ``trash/`` (atomic) and then deletes it:
  a kill mid-eviction leaves either the whole entry or garbage in ``trash/``;
* start-up repair removes only what is stale: staging directories whose
  process lock is free (their process is gone), ``trash/``, entry directories
  without ``stored.json`` (left by older versions' non-atomic eviction) and
  conversion temporaries older than any conversion may run.

The cache is bounded by ``MODEL_CACHE_MAX_MB``, entries and conversions
together: least recently used first, never one the caller says is loaded or
in use.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

from filelock import FileLock, Timeout

from .store.base import (CONVERTED_FILE, LocalModelFiles, StoredModel, StoreUnavailable, model_filename,
                         parse_metadata)

log = logging.getLogger(__name__)

STORED_JSON = "stored.json"
#: Seconds a process waits for another one's download of the same model
#: (its own reads are bounded by S3_READ_TIMEOUT, so it ends well before).
DOWNLOAD_LOCK_TIMEOUT = 600.0
#: Conversion temporaries older than this are stale (a conversion takes at most CONVERT_TIMEOUT).
STALE_TEMPORARY_SECONDS = 3600.0


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    name: str
    fingerprint: str
    path: Path
    size: int
    last_used: float
    #: "entry" (a downloaded model) or "converted" (a conversion of a local-store model).
    kind: str = "entry"

    @property
    def key(self) -> str:
        return f"{self.name}/{self.fingerprint}"


def _lock(path: Path, timeout: float = -1) -> FileLock:
    # The lock file stays: deleting it on release would let a third process
    # lock a new file while a second still waits on the old one.
    return FileLock(path, timeout=timeout, thread_local=False, preserve_lock_file=True)


def _complete(folder: Path) -> bool:
    """An entry with its record and its model file (older versions' eviction
    could be killed between the two)."""
    return (folder / STORED_JSON).is_file() and any((folder / name).is_file() for name in ("model.keras", "model.h5"))


class DiskCache:
    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._entries_dir = self.root / "entries"
        self._converted_dir = self.root / "converted"
        self._staging_dir = self.root / "staging"
        self._locks_dir = self.root / "locks"
        self._trash_dir = self.root / "trash"
        self._lock = threading.Lock()
        for folder in (self._entries_dir, self._staging_dir, self._locks_dir, self._trash_dir):
            folder.mkdir(parents=True, exist_ok=True)
        # This process's staging directory, claimed by a lock held for the
        # process's lifetime (the kernel releases it if the process is killed),
        # and created only once the lock is held: a staging directory whose
        # lock is free is always stale.
        for attempt in range(3):
            self.process_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self._process_lock = _lock(self._staging_dir / f"{self.process_id}.lock", timeout=0)
            try:
                self._process_lock.acquire()
                break
            except Timeout:  # another process's repair held the new file for an instant
                if attempt == 2:
                    raise
        self._own_staging = self._staging_dir / self.process_id
        self._own_staging.mkdir()
        self.repair()
        atexit.register(self.close)

    def close(self) -> None:
        """Remove this process's staging directory (on a clean exit; after a
        kill the next start-up's repair does it)."""
        shutil.rmtree(self._own_staging, ignore_errors=True)
        if self._process_lock.is_locked:
            self._process_lock.release()
            (self._staging_dir / f"{self.process_id}.lock").unlink(missing_ok=True)

    # -- repair ----------------------------------------------------------------

    def repair(self) -> None:
        """Remove what killed processes left behind, and only that."""
        for item in list(self._staging_dir.iterdir()):
            process_id = item.name[: -len(".lock")] if item.name.endswith(".lock") else item.name
            if process_id == self.process_id:
                continue
            claim = _lock(self._staging_dir / f"{process_id}.lock", timeout=0)
            try:
                claim.acquire()
            except Timeout:
                continue  # a live process: its downloads are its own
            try:
                if item.is_dir():
                    log.info("removing a dead process's download in progress: %s", item.name)
                    self._discard(item)
            finally:
                claim.release()
                if not (self._staging_dir / process_id).exists():
                    (self._staging_dir / f"{process_id}.lock").unlink(missing_ok=True)
        for item in list(self._trash_dir.iterdir()):
            shutil.rmtree(item, ignore_errors=True)
        for folder in self._entries_dir.glob("*/*"):
            if folder.is_dir() and not _complete(folder):
                log.info("removing an incomplete cache entry: %s/%s", folder.parent.name, folder.name)
                self._discard(folder)
        now = time.time()
        for pattern in ("entries/*/*/.*.tmp", "converted/*/*/.*.tmp"):
            for temporary in self.root.glob(pattern):
                try:
                    if now - temporary.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                        temporary.unlink()
                except FileNotFoundError:
                    pass

    def _discard(self, folder: Path) -> bool:
        """Delete a directory atomically: rename it into trash/, then delete it.
        False if it was gone already (another process got there first)."""
        doomed = self._trash_dir / uuid.uuid4().hex
        try:
            os.rename(folder, doomed)
        except FileNotFoundError:
            return False
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def _entry_dir(self, name: str, fingerprint: str) -> Path:
        return self._entries_dir / name / fingerprint

    # -- reading -------------------------------------------------------------

    def get(self, stored: StoredModel) -> LocalModelFiles | None:
        """The cached files for exactly this version, or None."""
        folder = self._entry_dir(stored.name, stored.fingerprint)
        if not _complete(folder):
            return None
        return self._files(folder, stored)

    def _files(self, folder: Path, stored: StoredModel) -> LocalModelFiles:
        os.utime(folder / STORED_JSON)  # last use, for LRU eviction
        metadata = parse_metadata(lambda key: (folder / key).read_text(encoding="utf-8"),
                                  {role: role for role in stored.metadata_keys})
        converted = folder / CONVERTED_FILE  # published with the model, or converted here
        return LocalModelFiles(stored, folder / model_filename(stored), metadata,
                               converted if converted.is_file() else None)

    def converted_dir(self, files: LocalModelFiles) -> Path:
        """Where to keep a LiteRT conversion of `files`: beside the model when
        it lives in the cache (evicted with it), else under `converted/`
        (counted and evicted within the same bound)."""
        if self._entries_dir in files.model_path.parents:
            return files.model_path.parent
        # Created only when a conversion is written (not per version looked at).
        folder = self._converted_dir / files.stored.name / files.stored.fingerprint
        try:
            os.utime(folder)  # last use, for LRU eviction
        except FileNotFoundError:
            pass
        return folder

    def has(self, name: str) -> bool:
        """Whether some version of `name` is on disk here."""
        return any((self._entries_dir / name).glob(f"*/{STORED_JSON}"))

    def latest(self, name: str) -> StoredModel | None:
        """The most recently used cached version of `name` (for store outages)."""
        candidates = [e for e in self.entries() if e.name == name and e.kind == "entry"]
        if not candidates:
            return None
        newest = max(candidates, key=lambda e: e.last_used)
        data = json.loads((newest.path / STORED_JSON).read_text())
        known = {f.name for f in dataclasses.fields(StoredModel)}
        return StoredModel(**{key: value for key, value in data.items() if key in known})

    def entries(self) -> list[CacheEntry]:
        """Every complete entry and every conversion, with its size and last use."""
        found = []
        for marker in self._entries_dir.glob(f"*/*/{STORED_JSON}"):
            folder = marker.parent
            try:
                size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
                found.append(CacheEntry(folder.parent.name, folder.name, folder, size, marker.stat().st_mtime))
            except FileNotFoundError:  # evicted meanwhile
                continue
        for folder in self._converted_dir.glob("*/*"):
            try:
                size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
                found.append(CacheEntry(folder.parent.name, folder.name, folder, size, folder.stat().st_mtime,
                                        kind="converted"))
            except (FileNotFoundError, NotADirectoryError):
                continue
        return found

    def total_bytes(self) -> int:
        return sum(entry.size for entry in self.entries())

    # -- writing -------------------------------------------------------------

    def put(self, stored: StoredModel, write: Callable[[Path], None],
            protected: Iterable[str] = ()) -> LocalModelFiles:
        """Download a model with `write(staging_dir)` and publish it atomically.

        `write` must put the model file (named `model_filename(stored)`) and
        the metadata files (named by role) into the directory it is given,
        checking them as it goes; any exception discards everything.
        Several processes asking for one model download it once: the first
        holds the model's lock, the others wait for it and find the entry.
        """
        model_lock = _lock(self._locks_dir / f"{stored.name}.lock", timeout=DOWNLOAD_LOCK_TIMEOUT)
        try:
            model_lock.acquire()
        except Timeout:
            raise StoreUnavailable(f"another process has been downloading model {stored.name} for "
                                   f"{DOWNLOAD_LOCK_TIMEOUT:.0f}s") from None
        try:
            cached = self.get(stored)  # downloaded by another process while we waited
            if cached is not None:
                return cached
            self.make_room(stored.total_size, protected)
            staging = self._own_staging / uuid.uuid4().hex
            staging.mkdir(parents=True)
            try:
                write(staging)
                record = dataclasses.asdict(stored)
                record.pop("publishing", None)  # never true for a set that is fetched
                (staging / STORED_JSON).write_text(json.dumps(record))
                final = self._entry_dir(stored.name, stored.fingerprint)
                final.parent.mkdir(parents=True, exist_ok=True)
                if final.exists():  # incomplete (no stored.json, or get() would have found it)
                    self._discard(final)
                os.rename(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        finally:
            model_lock.release()
        return self._files(final, stored)

    def make_room(self, needed: int, protected: Iterable[str] = ()) -> None:
        """Evict least recently used entries until `needed` more bytes fit."""
        protected = set(protected)
        with self._lock:
            entries = sorted(self.entries(), key=lambda e: e.last_used)
            total = sum(e.size for e in entries)
            for entry in entries:
                if total + needed <= self.max_bytes:
                    break
                if entry.key in protected:
                    continue
                total -= entry.size
                if self._discard(entry.path):
                    log.info("evicted %s %s (%s) from the disk cache, %.1f MB",
                             "model" if entry.kind == "entry" else "the conversion of", entry.name,
                             entry.fingerprint, entry.size / 1e6)
            if total + needed > self.max_bytes:
                log.warning("disk cache over its %.1f MB bound (%.1f MB needed, rest in use)",
                            self.max_bytes / 1e6, (total + needed) / 1e6)

    # -- warm set ------------------------------------------------------------

    def read_warm_set(self) -> dict[str, float]:
        try:
            data = json.loads((self.root / "warm.json").read_text())
            return {str(k): float(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def write_warm_set(self, used: dict[str, float]) -> None:
        target = self.root / "warm.json"
        temporary = target.with_name(f".warm.{uuid.uuid4().hex}.tmp")
        try:
            temporary.write_text(json.dumps(used))
            os.replace(temporary, target)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            log.warning("could not record the warm set: %s", exc)


def recent(used: dict[str, float], limit: int, max_age: float) -> list[str]:
    """The `limit` most recently used names, used within `max_age` seconds."""
    now = time.time()
    fresh = [(t, n) for n, t in used.items() if now - t <= max_age]
    return [name for _, name in sorted(fresh, reverse=True)[:limit]]
