"""LiteRT interpreters are built as calls need them: one at load, the next
when a call finds every built one busy, never more than LITERT_INTERPRETERS.

In process, on the demo model's LiteRT file: the test keeps an interpreter
busy by borrowing it, exactly as a running call holds it.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from serverproc import ROOT
from webapp.models.runtime.litert_runtime import LiteRTRuntime

pytestmark = pytest.mark.quick  # in `make test-fast`

DEMO = ROOT / "models" / "shapes" / "model.tflite"


def frame(value: float) -> np.ndarray:
    return np.full((1, 64, 64, 3), value, np.float32)


def test_a_loaded_model_holds_one_interpreter_until_calls_overlap():
    runtime = LiteRTRuntime(DEMO, threads=1, interpreters=2)
    try:
        expected = runtime.predict(frame(128.0))
        assert (runtime.interpreters, runtime.interpreters_made) == (2, 1)
        for _ in range(5):  # one call at a time never needs a second
            runtime.predict(frame(128.0))
        assert runtime.interpreters_made == 1

        busy = runtime._borrow()  # a call is running on the first interpreter
        try:
            # The next call builds the second and answers the same as the first would.
            assert np.allclose(runtime.predict(frame(128.0)), expected, atol=1e-6)
            assert runtime.interpreters_made == 2

            # Both busy and no more allowed: a third call waits for one to be freed.
            second = runtime._borrow()
            answered = []
            waiting = threading.Thread(target=lambda: answered.append(runtime.predict(frame(128.0))))
            waiting.start()
            waiting.join(0.5)
            assert waiting.is_alive() and answered == [] and runtime.interpreters_made == 2
            runtime._pool.put(second)
            waiting.join(10)
            assert len(answered) == 1 and np.allclose(answered[0], expected, atol=1e-6)
        finally:
            runtime._pool.put(busy)
        assert runtime.interpreters_made == 2
    finally:
        runtime.close()


def test_memory_is_counted_for_every_interpreter_the_model_may_build():
    """The memory bound adds up `memory_bytes`: it must not grow when the
    second interpreter is built later."""
    one = LiteRTRuntime(DEMO, threads=1, interpreters=1)
    two = LiteRTRuntime(DEMO, threads=1, interpreters=2)
    try:
        size = DEMO.stat().st_size
        assert one.memory_bytes >= size
        assert two.memory_bytes - size == pytest.approx(2 * (one.memory_bytes - size), rel=0.25, abs=256 * 1024)
        before = two.memory_bytes
        busy = two._borrow()
        try:
            two.predict(frame(0.0))
        finally:
            two._pool.put(busy)
        assert two.interpreters_made == 2 and two.memory_bytes == before
    finally:
        one.close()
        two.close()
