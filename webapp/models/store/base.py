"""The model store interface, shared by every backend.

A store holds models in one of two layouts (the same in a local directory
and in S3):

* directory: ``<root>/<name>/model.keras`` or ``model.h5``, with optional
  ``labels.txt``, ``labels.json`` and ``model.json`` beside it;
* flat (the original S3 bucket design): ``<root>/<name>.keras`` or
  ``<root>/<name>.h5``, with an optional ``<root>/<name>.labels.txt``.

Either layout may carry the model converted to LiteRT beside it
(``model.tflite``, or ``<name>.tflite`` in the flat layout) and its int8
version (``model.int8.tflite``, or ``<name>.int8.tflite``).

A store lists models and fetches one as local files; it never loads models.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

from ..modelspec import ModelMetadata

log = logging.getLogger(__name__)

#: Model file names in the directory layout, in order of preference.
DIRECTORY_MODEL_FILES = ("model.keras", "model.h5")
#: Model file suffixes in the flat layout, in order of preference.
FLAT_MODEL_SUFFIXES = (".keras", ".h5")
METADATA_FILES = ("labels.txt", "labels.json", "model.json")
#: The model converted to LiteRT, when it was published beside the model.
CONVERTED_FILE = "model.tflite"
#: The full-integer (int8) LiteRT version, when published with `--quantize int8`.
INT8_FILE = "model.int8.tflite"
#: Every file that travels with a model in the directory layout.
COMPANION_FILES = (*METADATA_FILES, CONVERTED_FILE, INT8_FILE)


def flat_companions(name: str) -> dict[str, str]:
    """The files that travel with a flat-layout model: {role: file name beside it}.

    Roles are the directory layout's file names, so the cache and the loaders
    see one set of names whatever the layout. (A flat model named ``x.int8``
    would have its LiteRT file where ``x`` keeps its int8 file: don't.)
    """
    return {"labels.txt": f"{name}.labels.txt", CONVERTED_FILE: f"{name}.tflite",
            INT8_FILE: f"{name}.int8.tflite"}
#: Written by `publish` after every other file of a version: while any file of
#: a model is newer than its manifest, a publish is in progress and the set is
#: not a version yet (servers keep serving the one they have).
MANIFEST_FILE = "manifest.json"
#: A set still newer than its manifest after this long is taken as it is (files
#: changed by hand in a published folder), with a warning.
PUBLISH_GRACE_SECONDS = 3600.0

#: Called with a fraction 0.0-1.0 while a fetch makes progress.
ProgressCallback = Callable[[float], None]


@dataclass(frozen=True)
class StoredModel:
    """One model as the store lists it: where it is and which version it is."""

    name: str
    layout: str  # "directory" or "flat"
    model_key: str  # path or object key of the model file
    #: What clients see as `label.version`: the first 12 characters of
    #: `fingerprint`, so it too changes with any file of the set.
    version: str
    size: int
    #: metadata file name ("labels.txt", ...) -> path or object key
    metadata_keys: dict = field(default_factory=dict)
    #: The version's full id, from every file of the set (model and
    #: metadata): the disk cache, the refresh check and the memory of broken
    #: versions key on it.
    fingerprint: str = ""
    #: Bytes of all files (model plus metadata), for cache accounting.
    total_size: int = 0
    #: ETag of each file when the store has one (S3), for download checks.
    etags: dict = field(default_factory=dict)
    #: Some file is newer than the folder's manifest: a publish is writing a
    #: new version, and this set (part old, part new) must not be served.
    publishing: bool = False

    @property
    def file_format(self) -> str:
        return "h5" if self.model_key.endswith(".h5") else "keras"


@dataclass(frozen=True)
class LocalModelFiles:
    """A fetched model: a local model file plus its parsed metadata."""

    stored: StoredModel
    model_path: Path
    metadata: ModelMetadata
    #: The LiteRT file beside the model, if there is one.
    converted_path: Path | None = None


class StoreUnavailable(RuntimeError):
    """The store cannot be reached (network, credentials, missing root)."""


class PublishInProgress(StoreUnavailable):
    """A new version of the model is being written and no complete one is at hand."""


_WARNED: set = set()


def publishing(name: str, newest_file: float, manifest: float | None, now: float) -> bool:
    """Whether a set whose newest file was written at `newest_file` (seconds
    since the epoch) is mid-publish, given its manifest's time (None: no
    manifest, a folder `publish` never wrote: taken as it is)."""
    if manifest is None or newest_file <= manifest:
        return False
    if now - newest_file > PUBLISH_GRACE_SECONDS:
        if (name, newest_file) in _WARNED:
            return False
        if len(_WARNED) >= 1024:
            _WARNED.clear()
        _WARNED.add((name, newest_file))  # once per set, not per version check
        log.warning("model %s: files newer than its %s for over %.0f s: serving them as they are "
                    "(publish with `python -m webapp publish`, which writes the manifest last)",
                    name, MANIFEST_FILE, PUBLISH_GRACE_SECONDS)
        return False
    return True


def fingerprint_of(parts) -> str:
    """A short stable id for a set of (file name, version) pairs."""
    import hashlib

    digest = hashlib.sha256()
    for name, version in sorted(parts):
        digest.update(f"{name}={version};".encode())
    return digest.hexdigest()[:16]


class ModelStore(Protocol):
    description: str

    def list_models(self, max_age: float | None = None) -> list[StoredModel]: ...

    def model_names(self) -> set[str]:
        """Every model name in the store, listed now (no model file read)."""
        ...

    def find(self, name: str) -> StoredModel | None: ...

    def fetch(self, stored: StoredModel, progress: ProgressCallback | None = None,
              protected: Callable[[], Iterable[str]] = frozenset) -> LocalModelFiles:
        """The files of `stored` on local disk. A download may evict cache
        entries to make room, never those whose keys `protected()` returns
        when the room is made (asked then: other loads may start meanwhile)."""

    def status(self) -> dict: ...


def parse_metadata(read_text: Callable[[str], str], metadata_keys: dict) -> ModelMetadata:
    """Read and parse a model's optional metadata files with `read_text(key)`."""
    texts = {role: read_text(key) for role, key in metadata_keys.items() if role in METADATA_FILES}
    return ModelMetadata.parse(
        labels_txt=texts.get("labels.txt"),
        labels_json=texts.get("labels.json"),
        model_json=texts.get("model.json"),
    )


def model_filename(stored: StoredModel) -> str:
    """The model's file name inside a cache entry (flat names normalised)."""
    return "model.h5" if stored.file_format == "h5" else "model.keras"
