"""The raw limit: the runtime's own throughput, in-process, no server."""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

import numpy as np

from ..models.runtime.litert_runtime import LiteRTRuntime


def _interpreter(tflite: Path, threads: int, batch: int):
    """A bare LiteRT interpreter with its input resized to `batch`."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite), num_threads=threads)
    detail = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(detail["index"], (batch, *detail["shape_signature"][1:]), strict=False)
    interpreter.allocate_tensors()
    return interpreter, detail["index"]


def throughput(tflite: Path, threads: int, interpreters: int, batch: int, duration: float) -> float:
    """Frames/s of `interpreters` bare interpreters running batches side by side."""
    pool = [_interpreter(tflite, threads, batch) for _ in range(interpreters)]
    shape = pool[0][0].get_input_details()[0]["shape"]
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    for interpreter, index in pool:
        interpreter.set_tensor(index, x)
        interpreter.invoke()
    counts = [0] * interpreters
    stop_at = time.perf_counter() + duration

    def loop(i: int) -> None:
        interpreter, index = pool[i]
        while time.perf_counter() < stop_at:
            interpreter.set_tensor(index, x)
            interpreter.invoke()
            counts[i] += batch

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(interpreters)]  # invoke releases the GIL
    began = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - began)


#: The pause before each call of the paced batch-1 latency: about the time a
#: lone client's frame spends outside the model (network, Socket.IO, client).
PACED_PAUSE_MS = 2.0


def batch1_latency_ms(tflite: Path, threads: int, repeats: int = 50, pause_ms: float = 0.0) -> float:
    """Median wall ms of one frame through a bare runtime, back to back, or
    `pause_ms` apart: this VM runs the same work up to 2x slower after an idle
    spell, which is what a lone client's frames see, so the paced figure is the
    fair one to set a single client's latency against."""
    runtime = LiteRTRuntime(tflite, threads=threads)
    height, width, channels = runtime.input_shape
    x = np.zeros((1, height, width, channels), np.float32)
    runtime.predict(x)
    times = []
    for _ in range(repeats):
        if pause_ms:
            time.sleep(pause_ms / 1000.0)
        started = time.perf_counter()
        runtime.predict(x)
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def raw_limit(tflite: Path, duration: float, quick: bool) -> dict:
    """Every (threads, interpreters, batch) combination; the best one is the limit."""
    grid = []
    for threads in (1, 2):
        for interpreters in (1, 2):
            for batch in ((1, 8) if quick else (1, 4, 8, 16)):
                fps = throughput(tflite, threads, interpreters, batch, duration)
                grid.append({"threads": threads, "interpreters": interpreters, "batch": batch, "fps": round(fps, 1)})
    best = max(grid, key=lambda row: row["fps"])
    latency = min(batch1_latency_ms(tflite, threads) for threads in (1, 2))
    return {"best": best, "batch1_latency_ms": round(latency, 2), "grid": grid}
