"""Model stores: where model files live (a local directory, or S3)."""

from .base import LocalModelFiles, ModelStore, PublishInProgress, StoredModel, StoreUnavailable
from .local import LocalStore


def open_store(location: str, cache=None, settings: dict | None = None,
               on_download=lambda model, seconds: None) -> ModelStore:
    """The store for a `MODEL_STORE` setting: `s3://bucket/prefix` or a directory.

    `on_download(model, seconds)` is told of each download (S3 only: a
    directory store has nothing to download)."""
    if location.startswith("s3://"):
        from .s3 import S3Store

        return S3Store(location, cache, settings or {}, on_download)
    return LocalStore(location)


__all__ = ["LocalModelFiles", "LocalStore", "ModelStore", "PublishInProgress", "StoredModel", "StoreUnavailable",
           "open_store"]
