"""A model store in S3 (or any S3-compatible service), with a local disk cache.

Listing uses ListObjectsV2 only (no model is downloaded to list or to find
one). A version is the set of files one listing saw, identified by all their
ETags. Fetching downloads exactly that set into the `DiskCache`: every GET is
pinned with `IfMatch` to the ETag listed, so a file replaced mid-download
fails at once (412) instead of mixing two versions, and the set is listed and
read again; S3 checksums are validated where the object has them
(`ChecksumMode`), sizes always, and the content against the ETag: a plain
MD5, or for a multipart upload the MD5 of its parts' MD5s (part sizes asked
for with `PartNumber`).
A cached copy whose ETags are unchanged is reused. When S3 cannot be reached,
models already cached keep serving from the cache.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable
from urllib.parse import urlparse

from ..modelspec import is_valid_model_name
from .base import (
    COMPANION_FILES, DIRECTORY_MODEL_FILES, FLAT_MODEL_SUFFIXES, MANIFEST_FILE,
    LocalModelFiles, ProgressCallback, PublishInProgress, StoredModel, StoreUnavailable, fingerprint_of,
    model_filename, flat_companions, publishing,
)

if TYPE_CHECKING:  # the cache is passed in; importing it here would make a cycle
    from ..cache import DiskCache

log = logging.getLogger(__name__)

_PLAIN_MD5 = re.compile(r"[0-9a-f]{32}")
#: A multipart upload's ETag: the MD5 of its parts' MD5s, and the part count.
_MULTIPART_ETAG = re.compile(r"([0-9a-f]{32})-([0-9]+)")


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix/")."""
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    prefix = parsed.path.strip("/")
    return parsed.netloc, f"{prefix}/" if prefix else ""


def make_client(settings: dict):
    """A boto3 S3 client with explicit, bounded timeouts and retries.

    botocore's defaults (60 s connect and read, legacy retries) can hold a
    frame for minutes when S3 stalls; these bounds make an outage visible in
    seconds, after which cached models keep serving.
    """
    import boto3
    from botocore.config import Config as BotoConfig

    config = BotoConfig(
        connect_timeout=float(settings["S3_CONNECT_TIMEOUT"]),
        read_timeout=float(settings["S3_READ_TIMEOUT"]),
        retries={"mode": "standard", "max_attempts": int(settings["S3_MAX_ATTEMPTS"])},
    )
    session = boto3.session.Session()
    client = session.client("s3", endpoint_url=settings.get("S3_ENDPOINT_URL") or None, config=config)
    return session, client


def _etag(obj: dict) -> str:
    return str(obj.get("ETag", "")).strip('"')


def _model_candidate(rel: str) -> tuple[str, str, int] | None:
    """(name, layout, preference) if `rel` is a model file; lower preference wins."""
    if "/" in rel:
        folder, filename = rel.split("/", 1)
        if filename in DIRECTORY_MODEL_FILES:
            return folder, "directory", DIRECTORY_MODEL_FILES.index(filename)
        return None
    for rank, suffix in enumerate(FLAT_MODEL_SUFFIXES):
        if rel.endswith(suffix):
            return rel[: -len(suffix)], "flat", len(DIRECTORY_MODEL_FILES) + rank
    return None


def group_models(objects: Iterable[dict], prefix: str) -> dict[str, StoredModel]:
    """Turn listed objects into models, for both layouts (the same preference
    order as the local store: directory before flat, .keras before .h5)."""
    by_key = {obj["Key"][len(prefix):]: obj for obj in objects if obj["Key"].startswith(prefix)}
    chosen: dict[str, tuple[int, str, str]] = {}
    for rel in by_key:
        candidate = _model_candidate(rel)
        if candidate is None or not is_valid_model_name(candidate[0]):
            continue
        name, layout, rank = candidate
        if name not in chosen or rank < chosen[name][0]:
            chosen[name] = (rank, layout, rel)
    models = {}
    for name, (_, layout, rel) in chosen.items():
        if layout == "directory":
            metadata = {m: f"{name}/{m}" for m in COMPANION_FILES if f"{name}/{m}" in by_key}
        else:
            metadata = {role: key for role, key in flat_companions(name).items() if key in by_key}
        obj = by_key[rel]
        manifest = by_key.get(f"{name}/{MANIFEST_FILE}") if layout == "directory" else None
        newest = max(_modified(by_key[key]) for key in (rel, *metadata.values()))
        in_progress = publishing(name, newest, _modified(manifest) if manifest else None, time.time())
        etags = {"model": _etag(obj)}
        etags.update({role: _etag(by_key[key]) for role, key in metadata.items()})
        models[name] = StoredModel(
            name=name, layout=layout, model_key=prefix + rel,
            # One id for the whole set: labels or metadata changing is a new version too.
            version=fingerprint_of(etags.items())[:12],
            size=int(obj["Size"]),
            metadata_keys={role: prefix + key for role, key in metadata.items()},
            fingerprint=fingerprint_of(etags.items()),
            total_size=int(obj["Size"]) + sum(int(by_key[key]["Size"]) for key in metadata.values()),
            etags=etags,
            publishing=in_progress,
        )
    return models


def _modified(obj: dict) -> float:
    """An object's LastModified, in seconds since the epoch (0 if not listed)."""
    when = obj.get("LastModified")
    return when.timestamp() if hasattr(when, "timestamp") else 0.0


class S3Store:
    def __init__(self, url: str, cache: DiskCache | None, settings: dict,
                 on_download: Callable[[str, float], None] = lambda model, seconds: None):
        self.bucket, self.prefix = parse_s3_url(url)
        self.description = url
        self.cache = cache
        session, self._client = make_client(settings)
        self._list_ttl = float(settings["MODEL_LIST_TTL"])
        self._listing: tuple[float, dict[str, StoredModel]] | None = None
        self._lock = threading.Lock()
        self._reachable: bool | None = None
        self._last_error: str | None = None
        #: Called as on_download(model, seconds) after each download (metrics).
        self.on_download = on_download
        if session.get_credentials() is None:
            log.warning(
                "no AWS credentials found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                "~/.aws/credentials or an instance role): models in %s cannot be downloaded; "
                "cached models still serve", self.description)

    # -- listing ---------------------------------------------------------------

    def _list(self, prefix: str) -> list[dict]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            paginator = self._client.get_paginator("list_objects_v2")
            objects = []
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                objects.extend(page.get("Contents", []))
        except (BotoCoreError, ClientError) as exc:
            self._reachable, self._last_error = False, f"{type(exc).__name__}: {exc}"
            raise StoreUnavailable(f"cannot list s3://{self.bucket}/{prefix}: {exc}") from None
        self._reachable, self._last_error = True, None
        return objects

    def list_models(self, max_age: float | None = None) -> list[StoredModel]:
        """Every model, from a listing at most `max_age` seconds old (default MODEL_LIST_TTL)."""
        max_age = self._list_ttl if max_age is None else max_age
        with self._lock:
            if self._listing and time.monotonic() - self._listing[0] < max_age:
                return list(self._listing[1].values())
        models = group_models(self._list(self.prefix), self.prefix)
        ordered = dict(sorted(models.items()))
        with self._lock:
            self._listing = (time.monotonic(), ordered)
        return list(ordered.values())

    def model_names(self) -> set[str]:
        """The names of every model, listed now (one ListObjectsV2 per 1,000 keys)."""
        return {model.name for model in self.list_models(max_age=0.0)}

    def find(self, name: str) -> StoredModel | None:
        """The current version of `name` (always asks S3, so updates are seen).

        If S3 cannot be reached, the most recently used cached version is
        returned instead, so cached models keep serving through an outage.
        """
        if not is_valid_model_name(name):
            return None
        was_reachable = self._reachable
        try:
            objects = self._list(f"{self.prefix}{name}")
        except StoreUnavailable:
            cached = self.cache.latest(name) if self.cache else None
            if cached is None:
                raise
            if was_reachable is not False:  # once per outage, not per check
                log.warning("S3 unreachable (%s); serving cached models", self._last_error)
            return cached
        stored = group_models(objects, self.prefix).get(name)
        if stored is not None and stored.publishing:
            # Part old, part new: never served. The version cached last (the
            # one serving, as a rule) stands in until the manifest is written.
            cached = self.cache.latest(name) if self.cache else None
            if cached is not None:
                return cached
            raise PublishInProgress(f"model {name} is being published (files newer than its {MANIFEST_FILE})")
        return stored

    # -- fetching --------------------------------------------------------------

    def fetch(self, stored: StoredModel, progress: ProgressCallback | None = None,
              protected: Callable[[], Iterable[str]] = frozenset) -> LocalModelFiles:
        """The files of `stored`, or of the version that replaced it during the
        download (read again once); `files.stored` says which."""
        if self.cache is None:
            raise RuntimeError("this S3 store has no cache to download into")
        for attempt in range(2):
            cached = self.cache.get(stored)
            if cached is not None:
                if progress:
                    progress(1.0)
                return cached
            try:
                return self.cache.put(stored, lambda folder: self._download(stored, folder, progress),
                                      protected=protected())
            except VersionChanged as exc:
                fresh = self.find(stored.name)
                if attempt or fresh is None:
                    raise
                log.info("model %s changed during its download (%s); reading the new version %s",
                         stored.name, exc, fresh.version)
                stored = fresh
        raise AssertionError("unreachable")

    def _download(self, stored: StoredModel, folder: Path, progress: ProgressCallback | None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        files = [(stored.model_key, model_filename(stored), stored.etags.get("model"), stored.size)]
        files += [(key, role, stored.etags.get(role), None) for role, key in stored.metadata_keys.items()]
        done = [0]
        lock = threading.Lock()

        def advance(nbytes: int) -> None:
            with lock:
                done[0] += nbytes
                if progress and stored.total_size:
                    progress(min(1.0, done[0] / stored.total_size))

        # One GET per file, streamed (no transfer-manager threads: they would
        # be unpatched real threads under eventlet, and it cannot pin IfMatch).
        started = time.perf_counter()
        try:
            for key, filename, etag, size in files:
                target = folder / filename
                request = {"Bucket": self.bucket, "Key": key, "ChecksumMode": "ENABLED"}
                if etag:
                    request["IfMatch"] = f'"{etag}"'
                body = self._client.get_object(**request)["Body"]
                with open(target, "wb") as out:
                    for chunk in body.iter_chunks(DOWNLOAD_CHUNK):
                        out.write(chunk)
                        advance(len(chunk))
                _check_file(target, key, etag, size)
                if etag and _MULTIPART_ETAG.fullmatch(etag):
                    self._check_multipart(target, key, etag)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                raise VersionChanged(f"{key} no longer has the ETag listed") from None
            self._reachable, self._last_error = False, f"{type(exc).__name__}: {exc}"
            raise StoreUnavailable(f"download of s3://{self.bucket}/{stored.model_key} failed: {exc}") from None
        except BotoCoreError as exc:
            self._reachable, self._last_error = False, f"{type(exc).__name__}: {exc}"
            raise StoreUnavailable(f"download of s3://{self.bucket}/{stored.model_key} failed: {exc}") from None
        elapsed = time.perf_counter() - started
        log.info("downloaded model %s (%.1f MB) in %.2fs", stored.name, stored.total_size / 1e6, elapsed)
        self.on_download(stored.name, elapsed)

    def _check_multipart(self, path: Path, key: str, etag: str) -> None:
        """Check a multipart object's content against its ETag (the MD5 of its
        parts' MD5s), which needs the part sizes: part 1's from a HEAD with
        `PartNumber` (not pinned with IfMatch: some S3 implementations
        compare it with the part's own ETag; an object replaced meanwhile just
        fails the check and is read again at the next attempt). Uploaders
        (boto3, the AWS CLI, `publish`) use one size for every part but the last; only if the
        content does not match under that are all parts asked for, one HEAD
        each, before the file is refused."""
        count = int(etag.rsplit("-", 1)[1])
        obj = {"Bucket": self.bucket, "Key": key}
        first = int(self._client.head_object(**obj, PartNumber=1)["ContentLength"])
        total = path.stat().st_size
        last = total - first * (count - 1)
        if 0 < last <= first and _multipart_etag(path, [first] * (count - 1) + [last]) == etag:
            return
        sizes = [first] + [int(self._client.head_object(**obj, PartNumber=n)["ContentLength"])
                           for n in range(2, count + 1)]
        if sum(sizes) != total or _multipart_etag(path, sizes) != etag:
            raise CorruptDownload(f"{key}: content does not match its multipart ETag")

    def status(self) -> dict:
        return {"kind": "s3", "location": self.description, "reachable": self._reachable,
                "error": self._last_error}


class CorruptDownload(StoreUnavailable):
    """A downloaded file does not match what S3 said it would be."""


class VersionChanged(StoreUnavailable):
    """A file was replaced after the listing its download was pinned to."""


#: Bytes read from S3 per write (and progress report).
DOWNLOAD_CHUNK = 1 << 20


def _check_file(path: Path, key: str, etag: str | None, size: int | None) -> None:
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise CorruptDownload(f"{key}: got {actual} bytes, expected {size}")
    if etag and _PLAIN_MD5.fullmatch(etag):
        digest = hashlib.md5()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != etag:
            raise CorruptDownload(f"{key}: content does not match its ETag")


def _multipart_etag(path: Path, sizes: list[int]) -> str:
    """The ETag S3 gives an object uploaded in parts of these sizes."""
    digests = []
    with open(path, "rb") as fh:
        for size in sizes:
            part = hashlib.md5()
            left = size
            while left:
                chunk = fh.read(min(left, 1 << 20))
                if not chunk:
                    break
                part.update(chunk)
                left -= len(chunk)
            digests.append(part.digest())
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(sizes)}"
