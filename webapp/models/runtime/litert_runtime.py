"""Models served by the LiteRT interpreter (XNNPACK on the CPU).

On this class of machine LiteRT runs a MobileNetV2-size model several times
faster than TensorFlow and its process needs a fraction of the memory, since
TensorFlow is never imported. `invoke()` releases the GIL, so interpreters can
run while the event loop serves other clients.

An interpreter is not thread-safe, so the runtime keeps a small pool; each
call borrows one, and the batcher runs one call per interpreter at a time.

Measured on the 2-core machine (`python -m webapp bench`, MobileNetV2 224x224):
an interpreter runs a batch of N frames no faster per frame than N single
frames (140 fps at batch 1, 118 at batch 16, one thread), and its tensor
arena grows with the largest batch it has seen (about 6 MB per frame), so a
call runs its frames one at a time at batch 1. Two interpreters of two
threads each gave 250 frames/s with the best single-frame latency (3.7 ms);
one thread each gave 284 frames/s but twice the latency for a lone client.
Hence the defaults LITERT_INTERPRETERS=2, LITERT_THREADS=2.
"""

from __future__ import annotations

import logging
import os
import queue
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from ...server.memory import allocated_bytes, return_freed_memory
from .base import RuntimeLoadError

log = logging.getLogger(__name__)


class LiteRTRuntime:
    name = "litert"
    #: The calling thread takes part in every call (XNNPACK's other threads
    #: only help), so its CPU time measures the call (`frames.batching`): all
    #: of it with one thread, about its wall time with more.
    runs_on_caller = True

    def __init__(self, tflite_path: str | os.PathLike, threads: int = 2, interpreters: int = 2):
        if threads > 1:  # timed before the memory measurement below, which it must not touch
            # Under the measuring lock too: its throwaway interpreter, built
            # while another model's load is measured, was counted by that
            # load (a 4 MB model measured 9.6 MB once, loaded beside others).
            with _MEASURING:
                threads = threads_for(tflite_path, threads)
        # Measured: the bytes allocated while the interpreters are built
        # (flatbuffer, packed weights, arenas). One load measures at a time:
        # loads in parallel (the warm set at start-up) would each count the
        # others' memory (measured: 4 models loaded at once reported 142-157
        # MB in all for 54 MB of RSS growth). Loads take tens of milliseconds;
        # downloads and conversions still run in parallel. Allocated bytes,
        # not RSS growth: RSS does not grow when an allocation reuses pages
        # another model's load freed (a 12 MB model measured 8-10 MB so).
        #
        # Only the first interpreter is built now; the others are built the
        # first time a call finds every built one busy (`_borrow`), so a model
        # that is loaded but not busy holds one (measured: three int8
        # MobileNetV2 loaded and used one frame at a time, ~22 MB less).
        # `memory_bytes` counts all of them, as the first one measured: the
        # memory bound holds whatever the load.
        self._closed = False
        self._threads = threads
        with _MEASURING:
            before = allocated_bytes()
            content = Path(tflite_path).read_bytes()
            self._content = content
            self._pool: queue.Queue = queue.Queue()
            try:
                self._pool.put(self._new_slot())
            except Exception as exc:
                raise RuntimeLoadError(f"LiteRT could not load the converted model: {type(exc).__name__}: {exc}") from exc
            first = max(0, allocated_bytes() - before - len(content))
        #: Interpreters this model may use at once (one batcher worker each), and how many exist now.
        self.interpreters = max(1, interpreters)
        self.interpreters_made = 1
        # Never less than the flatbuffer itself.
        self.memory_bytes = len(content) + self.interpreters * first
        probe = self._pool.queue[0].interpreter
        inputs, outputs = probe.get_input_details(), probe.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise RuntimeLoadError("the converted model must have exactly one input and one output")
        shape = tuple(int(d) for d in inputs[0]["shape_signature"][1:])
        if len(shape) != 3 or min(shape) <= 0:
            raise RuntimeLoadError(f"the model input must be (height, width, channels), got {shape}")
        self.input_shape = shape
        self.output_units = int(outputs[0]["shape_signature"][-1])
        self.threads = threads

    def _new_slot(self) -> "_Slot":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=self._content, num_threads=self._threads)
        interpreter.allocate_tensors()
        slot = _Slot(interpreter)
        # One invoke so XNNPACK packs its weights now, not in a client's call.
        shape = interpreter.get_input_details()[0]["shape"]
        slot.run(np.zeros(shape, np.float32))
        return slot

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeError("this LiteRT runtime was closed")
        slot = self._borrow()
        try:
            return slot.run(np.ascontiguousarray(batch, dtype=np.float32))
        finally:
            self._pool.put(slot)

    def _borrow(self) -> "_Slot":
        """A free interpreter; when all are busy, a new one if fewer than
        `interpreters` exist (built here, on the caller's native thread),
        else the next one freed."""
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            pass
        if self.interpreters_made < self.interpreters:  # checked again under the lock
            # The measuring lock also keeps this build out of another model's load.
            with _MEASURING:
                if self.interpreters_made < self.interpreters:
                    try:
                        slot = self._new_slot()
                    except Exception:  # noqa: BLE001 - serve with the interpreters there are
                        log.warning("LiteRT could not build another interpreter; going on with %d",
                                    self.interpreters_made, exc_info=True)
                        self.interpreters = self.interpreters_made
                    else:
                        self.interpreters_made += 1
                        return slot
        return self._pool.get()

    def close(self) -> None:
        """Drop the interpreters (their arenas, packed weights and XNNPACK
        threads go with them) and the flatbuffer. Called once no call runs."""
        self._closed = True
        while True:
            try:
                slot = self._pool.get_nowait()
            except queue.Empty:
                break
            slot.interpreter = None
        self._content = None


#: Held while a runtime is built and measured (a native lock: the server
#: never monkey-patches threading, and loads run on native threads).
_MEASURING = threading.Lock()


#: A model whose batch-1 call takes less than this on one thread gets one
#: thread whatever LITERT_THREADS says (measured: a second XNNPACK thread
#: only hands work back and forth for a 0.1 ms model).
SINGLE_THREAD_BELOW_MS = 1.0


def threads_for(tflite_path: str | os.PathLike, threads: int) -> int:
    """`threads`, or 1 for a model that runs in under SINGLE_THREAD_BELOW_MS at batch 1.

    Timed on a throwaway one-thread interpreter (median of 5 calls after one
    that packs the weights); its memory is returned before the caller
    measures its own. Measured on the demo model (int8, 0.11 ms), server CPU
    per frame fell 6-15% (eventlet) and 8-15% (threading) with one thread;
    MobileNetV2 (4-5 ms) keeps LITERT_THREADS, which halves its latency.
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(tflite_path), num_threads=1)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        x = np.zeros(detail["shape"], np.float32)
        times = []
        for _ in range(6):
            started = time.perf_counter()
            interpreter.set_tensor(detail["index"], x)
            interpreter.invoke()
            times.append(time.perf_counter() - started)
    except Exception:  # noqa: BLE001 - the real load reports what is wrong with the file
        return threads
    finally:
        interpreter = None
        return_freed_memory()
    return 1 if statistics.median(times[1:]) * 1000.0 < SINGLE_THREAD_BELOW_MS else threads


class _Slot:
    """One interpreter and the batch size its tensors are allocated for."""

    def __init__(self, interpreter):
        self.interpreter = interpreter
        self.input_index = interpreter.get_input_details()[0]["index"]
        self.output_index = interpreter.get_output_details()[0]["index"]
        self.batch = int(interpreter.get_input_details()[0]["shape"][0])

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.batch != 1:
            self.interpreter.resize_tensor_input(self.input_index, (1, *batch.shape[1:]), strict=False)
            self.interpreter.allocate_tensors()
            self.batch = 1
        rows = []
        for frame in batch:  # one at a time: see the module docstring
            self.interpreter.set_tensor(self.input_index, frame[None])
            self.interpreter.invoke()
            rows.append(self.interpreter.get_tensor(self.output_index)[0].copy())
        return np.stack(rows)
