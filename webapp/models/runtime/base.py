"""The runtime interface: a loaded model that turns a batch into outputs."""

from __future__ import annotations

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
