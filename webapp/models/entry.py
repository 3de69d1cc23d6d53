"""What the registry keeps per model name, and the loaded version frames use."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from ..errors import ServingError
from .modelspec import ModelSpec
from .store import StoredModel

#: Called as listener(model_name, state, progress) while a model loads.
StatusListener = Callable[[str, str, float], None]
#: Called as announce(model_name, payload) for news every user of a model should get.
Announcer = Callable[[str, dict], None]


class Batcher(Protocol):
    """What a loaded version's frames go through (`webapp.frames.batching.ModelBatcher`)."""

    calls: int

    @property
    def depth(self) -> int: ...

    @property
    def retired(self) -> bool: ...

    def close(self) -> None: ...


#: Called as make_batcher(name, predict, workers, on_retired, runs_on_caller=...)
#: for each loaded version (`runs_on_caller`: see `runtime.base.Runtime`).
MakeBatcher = Callable[..., Batcher]


@dataclass
class LoadedModel:
    spec: ModelSpec
    runtime: object
    batcher: Batcher
    stored: StoredModel
    loaded_at: float = field(default_factory=time.time)

    @property
    def cache_key(self) -> str:
        return f"{self.stored.name}/{self.stored.fingerprint}"


class ModelEntry:
    """Book-keeping for one model name."""

    def __init__(self, name: str):
        self.name = name
        self.state = "unloaded"  # unloaded | downloading | loading | ready | failed
        self.current: LoadedModel | None = None
        self.error: ServingError | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.loading = False
        #: Cache keys ("name/fingerprint") of versions being built, kept on disk
        #: meanwhile: one for a load, one for a version check (they may overlap).
        self.loading_key: str | None = None
        self.refresh_key: str | None = None
        self.updating = False
        self.progress = 0.0
        self.done = None  # event set when the load in progress ends
        self.listeners: list[StatusListener] = []
        self.last_used = 0.0
        self.checked_at = 0.0
        #: The last version (fingerprint) that could not be served, and why:
        #: not downloaded or converted again until the store has another one.
        self.broken_fingerprint: str | None = None
        self.broken_error: ServingError | None = None
