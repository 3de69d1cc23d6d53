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

    # Optional: `runs_on_caller = True` when a call's work is done on the
    # calling thread, so that its CPU time measures the call (LiteRT; not
    # TensorFlow, whose own threads do the work).


class RuntimeLoadError(RuntimeError):
    """The model file could not be loaded by this runtime (reason in the message)."""
