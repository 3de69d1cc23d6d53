"""Writing a model into a store, in the directory layout (used by `publish`).

Metadata files go first, then the LiteRT file, and the model file last: a server that checks for a
new version mid-publish sees either the old model or the new one with its
labels (a new model beside old labels fails validation and the old version
keeps serving until the next check).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

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
        return keys
    folder = Path(location) / name
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, path in upload_order(files):
        target = folder / filename
        temporary = folder / f".{filename}.{uuid.uuid4().hex}.tmp"
        try:
            shutil.copyfile(path, temporary)
            os.replace(temporary, target)  # never a half-written file under the real name
        finally:
            temporary.unlink(missing_ok=True)
        progress(path.stat().st_size)
        written.append(str(target))
    return written
