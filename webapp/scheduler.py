"""Per-model frame scheduling: latest frame wins, waiting frames share one call.

Each loaded model has one `ModelBatcher`. Clients submit preprocessed frames;
a worker takes every frame waiting when the model becomes free (up to
``max_batch``) and runs them in one model call on a native thread. A runtime
with several interpreters gets one worker per interpreter.
Batching is what keeps a busy model at the CPU's limit: N clients cost one
call, not N.

Each client holds at most one waiting frame per model. A newer frame from the
same client replaces the waiting one, which is answered `superseded`: under
overload, latency stays bounded and memory flat, instead of queues growing.
(HTTP requests use a unique key each, so they are never superseded.)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .concurrency import Concurrency
from .errors import ModelUnavailable, ServingError, Superseded

log = logging.getLogger(__name__)


class BatcherClosed(ModelUnavailable):
    """This version of the model was unloaded or replaced; ask the registry again."""


@dataclass
class FrameResult:
    """One frame's row of a batch's output, with how long each stage took."""

    output: np.ndarray
    queue_ms: float
    inference_ms: float
    batch_size: int


class Ticket:
    """A submitted frame; `wait()` returns its `FrameResult` or raises."""

    __slots__ = ("tensor", "enqueued", "_event", "_result", "_error")

    def __init__(self, tensor: np.ndarray, event):
        self.tensor = tensor
        self.enqueued = time.perf_counter()
        self._event = event
        self._result = None
        self._error = None

    def resolve(self, result: FrameResult) -> None:
        self._result = result
        self._event.set()

    def fail(self, error: ServingError) -> None:
        self._error = error
        self._event.set()

    def wait(self, timeout: float | None = None) -> FrameResult:
        if not self._event.wait(timeout):
            raise ModelUnavailable("The model did not answer in time.")
        if self._error is not None:
            raise self._error
        return self._result


class ModelBatcher:
    """Queues frames for one model and runs them in batches."""

    def __init__(self, name: str, predict: Callable[[np.ndarray], np.ndarray],
                 concurrency: Concurrency, max_batch: int, workers: int = 1):
        self.name = name
        self._predict = predict
        self._concurrency = concurrency
        self._max_batch = max_batch
        self._pending: OrderedDict[object, Ticket] = OrderedDict()
        self._lock = threading.Lock()  # never held across a yield
        self._wake = concurrency.event()
        self._closed = False
        #: Model calls that may run at once: one per interpreter the runtime has.
        self._workers_wanted = max(1, workers)
        self._workers: list = []
        #: Measured seconds per model call and per frame, smoothed; the load hint uses them.
        self.mean_call_seconds = 0.0
        self.mean_frame_seconds = 0.0
        self.calls = 0
        self._last_seen: dict[object, float] = {}
        self._failure_logged = False

    @property
    def depth(self) -> int:
        return len(self._pending)

    def submit(self, client_key, tensor: np.ndarray) -> Ticket:
        ticket = Ticket(tensor, self._concurrency.event())
        with self._lock:
            self._last_seen[client_key] = ticket.enqueued
            if self._closed:
                raise BatcherClosed(f"Model '{self.name}' was unloaded; send the frame again.")
            replaced = self._pending.pop(client_key, None)
            self._pending[client_key] = ticket
            if not self._workers:
                self._workers = [self._concurrency.spawn(self._run) for _ in range(self._workers_wanted)]
            self._wake.set()
        if replaced is not None:
            replaced.fail(Superseded.by_newer_frame())
        return ticket

    def hint_interval_ms(self, window: float = 2.0) -> int:
        """How often each client should send so that frames do not queue.

        The model can answer about `workers / mean_frame_seconds` frames a
        second (measured, at the batch sizes it actually sees); shared by the
        clients active in the last `window` seconds, each gets its share.
        """
        now = time.perf_counter()
        with self._lock:
            for key in [k for k, seen in self._last_seen.items() if now - seen > window]:
                del self._last_seen[key]
            active = max(1, len(self._last_seen))
        share = active * self.mean_frame_seconds / self._workers_wanted
        return max(1, round(1000.0 * max(share, self.mean_call_seconds) * 1.1))

    def close(self) -> None:
        """Stop taking frames; frames already waiting are still answered."""
        with self._lock:
            self._closed = True
            self._wake.set()

    def _take_batch(self) -> list[Ticket]:
        with self._lock:
            batch = []
            # With several workers, split what is waiting so they all run.
            share = -(-len(self._pending) // self._workers_wanted)
            while self._pending and len(batch) < min(self._max_batch, share):
                batch.append(self._pending.popitem(last=False)[1])
            if not self._pending:
                self._wake.clear()
            return batch

    def _run(self) -> None:
        while True:
            self._wake.wait()
            batch = self._take_batch()
            if not batch:
                if self._closed:
                    return
                continue
            self._run_batch(batch)

    def _run_batch(self, batch: list[Ticket]) -> None:
        started = time.perf_counter()
        try:
            inputs = np.stack([ticket.tensor for ticket in batch])
            outputs = self._concurrency.run_blocking(self._predict, inputs)
        except Exception as exc:  # a model that raises must not kill the worker
            if len(batch) > 1:
                # One client's frame must not fail the others batched with it:
                # run them one by one, so only the frames that fail get an error.
                for ticket in batch:
                    self._run_batch([ticket])
                return
            # The traceback once per model, then one line per failing frame.
            log.warning("model %s failed on a frame: %s: %.300s", self.name, type(exc).__name__, exc,
                        exc_info=not self._failure_logged)
            self._failure_logged = True
            batch[0].fail(ModelUnavailable(f"Model '{self.name}' failed on this frame: {type(exc).__name__}."))
            return
        elapsed = time.perf_counter() - started
        self.calls += 1
        per_frame = elapsed / len(batch)
        if self.calls == 1:
            self.mean_call_seconds, self.mean_frame_seconds = elapsed, per_frame
        else:
            self.mean_call_seconds = 0.8 * self.mean_call_seconds + 0.2 * elapsed
            self.mean_frame_seconds = 0.8 * self.mean_frame_seconds + 0.2 * per_frame
        inference_ms = elapsed * 1000.0
        for i, ticket in enumerate(batch):
            ticket.resolve(FrameResult(
                output=outputs[i],
                queue_ms=(started - ticket.enqueued) * 1000.0,
                inference_ms=inference_ms,
                batch_size=len(batch),
            ))
