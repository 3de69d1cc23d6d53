"""The bounded local disk cache of models downloaded from a remote store.

Layout under ``MODEL_CACHE_DIR``::

    entries/<name>/<fingerprint>/   model.keras | model.h5, metadata files, stored.json
    staging/<random>/               downloads in progress (never served)
    warm.json                       models used recently, loaded again at start-up

A download is written into ``staging/`` and, once every file is complete and
checked, the whole directory is renamed into ``entries/`` in one atomic step:
a partial model is never visible under its final name, and a failed download
leaves nothing behind (``staging/`` is also emptied at start-up, in case a
previous process died mid-download). Entries are reused across restarts.

The cache is bounded by ``MODEL_CACHE_MAX_MB``: least recently used entries
are evicted first, never one the caller says is loaded or in use.
"""

from __future__ import annotations

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

from .store.base import CONVERTED_FILE, LocalModelFiles, StoredModel, parse_metadata

log = logging.getLogger(__name__)

STORED_JSON = "stored.json"


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    name: str
    fingerprint: str
    path: Path
    size: int
    last_used: float

    @property
    def key(self) -> str:
        return f"{self.name}/{self.fingerprint}"


def model_filename(stored: StoredModel) -> str:
    """The model's file name inside a cache entry (flat names normalised)."""
    return "model.h5" if stored.file_format == "h5" else "model.keras"


class DiskCache:
    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._entries_dir = self.root / "entries"
        self._staging_dir = self.root / "staging"
        self._lock = threading.Lock()
        self._entries_dir.mkdir(parents=True, exist_ok=True)
        self._staging_dir.mkdir(parents=True, exist_ok=True)
        self._clear_staging()

    def _clear_staging(self) -> None:
        for leftover in self._staging_dir.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)

    def _entry_dir(self, name: str, fingerprint: str) -> Path:
        return self._entries_dir / name / fingerprint

    # -- reading -------------------------------------------------------------

    def get(self, stored: StoredModel) -> LocalModelFiles | None:
        """The cached files for exactly this version, or None."""
        folder = self._entry_dir(stored.name, stored.fingerprint)
        if not (folder / STORED_JSON).is_file():
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
        it lives in the cache (evicted with it), else under `converted/`."""
        if self._entries_dir in files.model_path.parents:
            return files.model_path.parent
        folder = self.root / "converted" / files.stored.name / files.stored.fingerprint
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def has(self, name: str) -> bool:
        """Whether some version of `name` is on disk here."""
        return any((self._entries_dir / name).glob(f"*/{STORED_JSON}"))

    def latest(self, name: str) -> StoredModel | None:
        """The most recently used cached version of `name` (for store outages)."""
        candidates = [e for e in self.entries() if e.name == name]
        if not candidates:
            return None
        newest = max(candidates, key=lambda e: e.last_used)
        data = json.loads((newest.path / STORED_JSON).read_text())
        return StoredModel(**data)

    def entries(self) -> list[CacheEntry]:
        found = []
        for marker in self._entries_dir.glob(f"*/*/{STORED_JSON}"):
            folder = marker.parent
            try:
                size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
                found.append(CacheEntry(folder.parent.name, folder.name, folder, size, marker.stat().st_mtime))
            except FileNotFoundError:  # evicted meanwhile
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
        """
        self.make_room(stored.total_size, protected)
        staging = self._staging_dir / uuid.uuid4().hex
        staging.mkdir()
        try:
            write(staging)
            (staging / STORED_JSON).write_text(json.dumps(dataclasses.asdict(stored)))
            final = self._entry_dir(stored.name, stored.fingerprint)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, final)
            except OSError:
                if not (final / STORED_JSON).is_file():
                    raise
                shutil.rmtree(staging, ignore_errors=True)  # another process won the race
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
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
                shutil.rmtree(entry.path, ignore_errors=True)
                total -= entry.size
                log.info("evicted model %s (%s) from the disk cache, %.1f MB", entry.name,
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
