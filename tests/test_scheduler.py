"""The model batcher, in process: what a failing frame does to the frames batched with it."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from webapp.concurrency import ThreadingConcurrency
from webapp.errors import ModelUnavailable
from webapp.scheduler import ModelBatcher


def test_a_frame_that_makes_the_model_raise_fails_alone():
    started, gate, batch_sizes = threading.Event(), threading.Event(), []

    def predict(batch: np.ndarray) -> np.ndarray:
        batch_sizes.append(len(batch))
        if (batch < 0).any():
            raise ValueError("the model cannot take a negative pixel")
        if (batch == 99).any():
            started.set()
            gate.wait(10)  # hold the worker so the next frames wait together
        return batch.reshape(len(batch), -1)[:, :2] * 2.0

    batcher = ModelBatcher("m", predict, ThreadingConcurrency(), max_batch=8, workers=1)
    first = batcher.submit("warm", np.full((2, 2, 1), 99, np.float32))
    assert started.wait(10)
    tickets = {key: batcher.submit(key, np.full((2, 2, 1), value, np.float32))
               for key, value in (("a", 1), ("poison", -1), ("b", 2), ("c", 3))}
    gate.set()
    assert first.wait(10).output.tolist() == [198.0, 198.0]
    with pytest.raises(ModelUnavailable, match="failed on this frame"):
        tickets["poison"].wait(10)
    for key, value in (("a", 1), ("b", 2), ("c", 3)):
        assert tickets[key].wait(10).output.tolist() == [value * 2.0] * 2
    assert batch_sizes == [1, 4, 1, 1, 1, 1]  # the four waited together, then ran again one by one
    batcher.close()
