"""A model store in a local directory (the default: the bundled `models/`)."""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from ..modelspec import is_valid_model_name
from .base import (
    COMPANION_FILES, CONVERTED_FILE, DIRECTORY_MODEL_FILES, FLAT_MODEL_SUFFIXES, MANIFEST_FILE,
    LocalModelFiles, ProgressCallback, PublishInProgress, StoredModel, StoreUnavailable, fingerprint_of,
    parse_metadata, flat_companions, publishing,
)


#: Content hashes remembered (one per file version seen); cleared when full.
MAX_DIGESTS = 4096


class LocalStore:
    """Models in a directory; fetching returns the files in place, no copy."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.description = str(self.root)
        # Content hashes keyed by (path, size, mtime), so listing a store of
        # large models does not re-read them on every request.
        self._digests: dict[tuple, str] = {}
        self._lock = threading.Lock()

    def _version(self, path: Path) -> tuple[str, int]:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            digest = self._digests.get(key)
        if digest is None:
            sha = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    sha.update(chunk)
            digest = sha.hexdigest()[:12]
            with self._lock:
                if len(self._digests) >= MAX_DIGESTS:  # files replaced over weeks: stay bounded
                    self._digests.clear()
                self._digests[key] = digest
        return digest, stat.st_size

    def find(self, name: str) -> StoredModel | None:
        """The current version of `name`; `PublishInProgress` while a publish writes it."""
        stored = self._find_set(name)
        if stored is not None and stored.publishing:
            raise PublishInProgress(f"model {name} is being published (files newer than its {MANIFEST_FILE})")
        return stored

    def _find_set(self, name: str) -> StoredModel | None:
        if not is_valid_model_name(name):
            return None
        if not self.root.is_dir():
            raise StoreUnavailable(f"model store directory {self.root} does not exist")
        folder = self.root / name
        for filename in DIRECTORY_MODEL_FILES:
            path = folder / filename
            if path.is_file():
                metadata = {m: str(folder / m) for m in COMPANION_FILES if (folder / m).is_file()}
                stored = self._stored(name, "directory", path, metadata)
                if self._publishing(name, folder, [path, *map(Path, metadata.values())]):
                    stored = dataclasses.replace(stored, publishing=True)
                return stored
        for suffix in FLAT_MODEL_SUFFIXES:
            path = self.root / f"{name}{suffix}"
            if path.is_file():
                flat = {role: self.root / filename for role, filename in flat_companions(name).items()}
                metadata = {role: str(p) for role, p in flat.items() if p.is_file()}
                return self._stored(name, "flat", path, metadata)
        return None

    @staticmethod
    def _publishing(name: str, folder: Path, files: list[Path]) -> bool:
        """A publish is writing this folder: some file is newer than the manifest."""
        try:
            manifest = (folder / MANIFEST_FILE).stat().st_mtime
        except FileNotFoundError:
            return False
        newest = max(path.stat().st_mtime for path in files)
        return publishing(name, newest, manifest, time.time())

    def _stored(self, name: str, layout: str, path: Path, metadata: dict) -> StoredModel:
        digest, size = self._version(path)
        parts = [("model", digest)]
        total = size
        for role, key in metadata.items():
            file_digest, file_size = self._version(Path(key))
            parts.append((role, file_digest))
            total += file_size
        # One id for the whole set, from every file's content.
        fingerprint = fingerprint_of(parts)
        return StoredModel(name, layout, str(path), fingerprint[:12], size, metadata,
                           fingerprint=fingerprint, total_size=total)

    def model_names(self) -> set[str]:
        """Names that may be models (folders and flat model files), without reading any."""
        if not self.root.is_dir():
            raise StoreUnavailable(f"model store directory {self.root} does not exist")
        names = set()
        for entry in self.root.iterdir():
            if entry.is_dir():
                names.add(entry.name)
            elif entry.suffix in FLAT_MODEL_SUFFIXES:
                names.add(entry.name[: -len(entry.suffix)])
        return {name for name in names if is_valid_model_name(name)}

    def list_models(self, max_age: float | None = None) -> list[StoredModel]:
        found = (self._find_set(name) for name in sorted(self.model_names()))
        return [model for model in found if model is not None]

    def fetch(self, stored: StoredModel, progress: ProgressCallback | None = None,
              protected: Callable[[], Iterable[str]] = frozenset) -> LocalModelFiles:
        metadata = parse_metadata(lambda key: Path(key).read_text(encoding="utf-8"), stored.metadata_keys)
        if progress:
            progress(1.0)
        converted = stored.metadata_keys.get(CONVERTED_FILE)
        return LocalModelFiles(stored, Path(stored.model_key), metadata,
                               Path(converted) if converted else None)

    def status(self) -> dict:
        return {"kind": "local", "location": self.description, "reachable": self.root.is_dir()}
