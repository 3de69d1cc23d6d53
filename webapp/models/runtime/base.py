"""The runtime interface: a loaded model that turns a batch into outputs."""

from __future__ import annotations

import functools
from typing import Protocol

import numpy as np


class Runtime(Protocol):
    #: Which engine serves the model, as reported in `label.runtime`.
    name: str
    #: (height, width, channels) of one input.
    input_shape: tuple[int, int, int]
    #: Width of one output row.
    output_units: int
    #: Bytes the loaded model holds in memory (weights and buffers), measured.
    memory_bytes: int

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 [n, H, W, C] -> float32 [n, output_units]. Thread-safe."""
        ...

    def close(self) -> None: ...


class RuntimeLoadError(RuntimeError):
    """The model file could not be loaded by this runtime (reason in the message)."""


def return_freed_memory() -> None:
    """Give memory freed by a closed runtime back to the operating system.

    Interpreters are built and run on several native threads (eventlet's
    thread pool), so their memory comes from several glibc malloc arenas;
    freed, it stays in those arenas and RSS grows with every version swapped
    in (measured: +80 MB over 100 swaps of a 1 MB model, +14 MB with this).
    `malloc_trim` releases the free pages of every arena. A no-op without glibc.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
