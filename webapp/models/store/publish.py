"""Writing a model into a store, in the directory layout (used by `publish`).

A version is never seen half-written: every file goes first (metadata, then
the LiteRT files, then the model), and `manifest.json` last. While any file
of the folder is newer than its manifest, servers take the set as a publish
in progress and keep serving the version they have (a process starting
meanwhile serves its cached copy, or says the model is being published);
once the manifest is written, the new set is one new version. A model
published for the first time is not listed before its model file is written,
the last of its files but the manifest.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from .base import MANIFEST_FILE
from .s3 import parse_s3_url


def upload_order(files: dict[str, Path]) -> list[tuple[str, Path]]:
    """(file name in the store, local path): text metadata, then the LiteRT
    conversion, then the model itself, whose new ETag is what servers notice."""

    def rank(item):
        filename = item[0]
        if filename in ("model.keras", "model.h5"):
            return 2
        return 1 if filename in ("model.tflite", "model.int8.tflite") else 0

    return sorted(files.items(), key=rank)


def manifest(files: dict[str, Path]) -> bytes:
    """What `manifest.json` says: each file's size and SHA-256, and when."""
    import hashlib
    import json
    import time

    described = {}
    for filename, path in sorted(files.items()):
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        described[filename] = {"size": path.stat().st_size, "sha256": digest.hexdigest()}
    return json.dumps({"files": described, "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                      indent=2).encode()


def publish(location: str, name: str, files: dict[str, Path], settings: dict,
            progress: Callable[[int], None] = lambda n: None) -> list[str]:
    """Write `files` as `<store>/<name>/<file name>`; returns the keys written."""
    if location.startswith("s3://"):
        from .s3 import make_client

        bucket, prefix = parse_s3_url(location)
        _, client = make_client(settings)
        keys = []
        for filename, path in upload_order(files):
            key = f"{prefix}{name}/{filename}"
            client.upload_file(str(path), bucket, key, Callback=progress)
            keys.append(f"s3://{bucket}/{key}")
        key = f"{prefix}{name}/{MANIFEST_FILE}"  # last: the version is complete
        client.put_object(Bucket=bucket, Key=key, Body=manifest(files), ContentType="application/json")
        keys.append(f"s3://{bucket}/{key}")
        return keys
    folder = Path(location) / name
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, path in upload_order(files):
        target = folder / filename
        _write_atomically(target, lambda out: shutil.copyfile(path, out))
        progress(path.stat().st_size)
        written.append(str(target))
    target = folder / MANIFEST_FILE  # last: the version is complete
    _write_atomically(target, lambda out: out.write_bytes(manifest(files)))
    written.append(str(target))
    return written


def _write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """Never a half-written file under the real name."""
    temporary = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        write(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
