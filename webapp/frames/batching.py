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

A frame submitted to an idle model (nothing waiting, no call running) is run
by its caller at once (on a native thread, as a worker would), with no
hand-off to a worker and back: in threading mode that is two thread wake-ups
(0.05-0.3 ms each here, the most after an idle spell), a good part of what a
lone client waits for beyond the model. The caller holds a worker's place
while it runs, so calls never outnumber interpreters.

A frame may be submitted as a `DeferredInput` instead of a tensor: its pixels
are then decoded on the model's native thread, in the same hop as the batch's
model call. Under eventlet each hop between the event loop and a native
thread costs a queue hand-off and a fight for the GIL; one hop per batch
instead of one per frame plus one per batch is what the bench measured as the
larger part of the server's own cost per frame (see README, Speed). A frame
whose decoding fails is answered alone; a superseded frame is never decoded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ModelUnavailable, ServingError, Superseded
from ..server.async_mode import Concurrency

log = logging.getLogger(__name__)


#: Model calls (a batch, with its decoding) measured shorter than this on
#: average run on the frame path's own native threads (`Concurrency.run_short`).
SHORT_CALL_SECONDS = 0.010
#: The load hint counts the clients that sent a frame in this many seconds.
HINT_WINDOW_SECONDS = 2.0
#: The record of those clients is swept when it grows past this (and past
#: twice its size after the last sweep).
FORGET_CLIENTS_AT = 256


def overtook(newer: int | None, older: int | None) -> bool:
    """Whether a frame numbered `newer` was sent after one numbered `older`
    (frames a transport did not number are taken in the order they come)."""
    return newer is not None and older is not None and newer > older


class BatcherClosed(ModelUnavailable):
    """This version of the model was unloaded or replaced; ask the registry again."""


class RuntimeContractError(RuntimeError):
    """The runtime answered a batch with output that does not fit it (e.g. too few rows)."""


@dataclass
class FrameResult:
    """One frame's row of a batch's output, with how long each stage took."""

    output: np.ndarray
    queue_ms: float
    inference_ms: float
    batch_size: int
    #: Decoding done in the batch's hop (a `DeferredInput`), else 0.
    decode_ms: float = 0.0


class DeferredInput:
    """A frame whose model input is made on the model's native thread.

    `make()` runs there, with the batch; it returns the tensor or raises a
    `ServingError` that answers this frame alone.
    """

    __slots__ = ("_make", "_args", "decode_ms")

    def __init__(self, make: Callable, *args):
        self._make, self._args = make, args
        self.decode_ms = 0.0

    def make(self) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self._make(*self._args)
        finally:
            self.decode_ms = (time.perf_counter() - started) * 1000.0


class PendingFrame:
    """A submitted frame; `wait()` returns its `FrameResult` or raises."""

    __slots__ = ("tensor", "arrival", "enqueued", "_event", "_result", "_error", "done")

    def __init__(self, tensor: np.ndarray, event=None, arrival: int | None = None):
        self.tensor = tensor
        #: The frame's place in its client's sending order, if the transport knows it.
        self.arrival = arrival
        self.enqueued = time.perf_counter()
        #: Set when answered; None for a frame its caller runs (answered before
        #: anyone waits: an event per frame was ~3 % of the event loop's time).
        self._event = event
        self._result = None
        self._error = None
        self.done = False

    def resolve(self, result: FrameResult) -> None:
        self._result, self.done = result, True
        if self._event is not None:
            self._event.set()

    def fail(self, error: ServingError) -> None:
        self._error, self.done = error, True
        if self._event is not None:
            self._event.set()

    def wait(self, timeout: float | None = None) -> FrameResult:
        if not self.done and (self._event is None or not self._event.wait(timeout)):
            raise ModelUnavailable("The model did not answer in time.")
        if self._error is not None:
            raise self._error
        return self._result


class ModelBatcher:
    """Queues frames for one model and runs them in batches."""

    def __init__(self, name: str, predict: Callable[[np.ndarray], np.ndarray],
                 concurrency: Concurrency, max_batch: int, workers: int = 1,
                 on_retired: Callable[[], None] | None = None, runs_on_caller: bool = False):
        self.name = name
        self._predict = predict
        #: Called once, after `close()`, when the last worker has answered its
        #: last frame: the moment the runtime can be released.
        self._on_retired = on_retired
        self._retired = False
        self._running = 0  # workers started and not yet exited
        self._calls = 0  # model calls running now, by workers or by their callers (`submit`)
        self._concurrency = concurrency
        self._max_batch = max_batch
        self._pending: OrderedDict[object, PendingFrame] = OrderedDict()
        self._lock = threading.Lock()  # never held across a yield
        self._wake = concurrency.event()
        self._closed = False
        #: Model calls that may run at once: one per interpreter the runtime has.
        self._workers_wanted = max(1, workers)
        self._workers: list = []
        #: Measured seconds per model call and per frame, smoothed; the load hint uses them.
        self.mean_call_seconds = 0.0
        self.mean_frame_seconds = 0.0
        #: Seconds per call (decoding included) and per frame of the model
        #: alone, smoothed: where a call runs (`SHORT_CALL_SECONDS`) and where
        #: frames are decoded (`service`) are decided on these. The calling
        #: thread's CPU time, not the clock, for a runtime that `runs_on_caller`:
        #: on busy cores a 0.5 ms model's calls take 5 ms of wall time waiting
        #: for the GIL and a core, and decided on that, the demo model lost its
        #: one-hop path exactly when it was busiest. (Another runtime's own
        #: threads do its work: the clock, then.)
        self._runs_on_caller = runs_on_caller
        self.mean_call_cpu_seconds = 0.0
        self.mean_inference_seconds = 0.0
        self.calls = 0
        #: When each client last sent a frame (the load hint's count of active
        #: clients); clients idle for HINT_WINDOW_SECONDS are forgotten.
        self._last_seen: dict[object, float] = {}
        self._forget_at = FORGET_CLIENTS_AT
        self._failure_logged = False
        #: Model calls that raised or answered with the wrong shape (their frames got an error).
        self.failed_calls = 0

    @property
    def depth(self) -> int:
        return len(self._pending)

    def submit(self, client_key, tensor: "np.ndarray | DeferredInput", arrival: int | None = None) -> PendingFrame:
        """Queue a frame; `wait()` on the ticket for its result.

        If the model is idle, the caller runs the frame before this returns
        (`run_blocking`: inline in threading mode, on a native thread under
        eventlet), and the ticket is already done. A frame whose `arrival`
        is older than the client's waiting one (it was overtaken on its way
        here) is answered `superseded` at once, and the waiting one stays.
        """
        ticket = PendingFrame(tensor, arrival=arrival)
        overtaken = False
        with self._lock:
            self._last_seen[client_key] = ticket.enqueued
            if len(self._last_seen) > self._forget_at:
                # Here too, not only when an answer asks for the hint: frames that
                # all fail (every HTTP request its own client) must not pile up.
                self._forget_idle_clients(ticket.enqueued)
            if self._closed:
                raise BatcherClosed(f"Model '{self.name}' was unloaded; send the frame again.")
            if not self._workers:
                self._running = self._workers_wanted
                self._workers = [self._concurrency.spawn(self._run) for _ in range(self._workers_wanted)]
            run_here = not self._pending and self._calls == 0
            if run_here:
                self._calls += 1
                replaced = None
            else:
                replaced = self._pending.get(client_key)
                overtaken = replaced is not None and overtook(replaced.arrival, arrival)
                if overtaken:
                    replaced = None
                else:
                    ticket._event = self._concurrency.event()  # before any worker can see the ticket
                    self._pending.pop(client_key, None)
                    self._pending[client_key] = ticket
                    self._wake.set()
        if overtaken:
            ticket.fail(Superseded.by_newer_frame())
        if replaced is not None:
            replaced.fail(Superseded.by_newer_frame())
        if run_here:
            try:
                self._run_batch([ticket])
            except Exception as exc:  # noqa: BLE001 - answered, as a worker would
                self._batch_crashed([ticket], exc)
            finally:
                self._call_finished()
        return ticket

    def hint_interval_ms(self) -> int:
        """How often each client should send so that frames do not queue.

        The model can answer about `workers / mean_frame_seconds` frames a
        second (measured, at the batch sizes it actually sees); shared by the
        clients active in the last HINT_WINDOW_SECONDS, each gets its share.
        """
        with self._lock:
            self._forget_idle_clients(time.perf_counter())
            active = max(1, len(self._last_seen))
        share = active * self.mean_frame_seconds / self._workers_wanted
        return max(1, round(1000.0 * max(share, self.mean_call_seconds) * 1.1))

    def _forget_idle_clients(self, now: float) -> None:
        """Under `_lock`: drop clients idle for HINT_WINDOW_SECONDS. Next time
        when the record has doubled, so the cost per frame stays constant."""
        for key in [k for k, seen in self._last_seen.items() if now - seen > HINT_WINDOW_SECONDS]:
            del self._last_seen[key]
        self._forget_at = max(FORGET_CLIENTS_AT, 2 * len(self._last_seen))

    @property
    def retired(self) -> bool:
        """Closed, every waiting frame answered, every worker gone."""
        return self._retired

    def close(self) -> None:
        """Stop taking frames; frames already waiting are still answered.

        Once they are, the workers exit and `on_retired` runs (once), so a
        replaced or unloaded version lets go of its runtime.
        """
        with self._lock:
            self._closed = True
            self._wake.set()  # stays set from now on: no worker may wait again
            idle = self._running == 0 and self._calls == 0
        if idle:
            self._retire()

    def _retire(self) -> None:
        with self._lock:
            if self._retired:
                return
            self._retired = True
        release, self._on_retired = self._on_retired, None
        self._predict = None  # the batcher may outlive its runtime (a frame's reference)
        if release is not None:
            try:
                release()
            except Exception:  # noqa: BLE001 - releasing must not take the worker down
                log.exception("releasing model %s failed", self.name)

    def _take_batch(self) -> list[PendingFrame]:
        with self._lock:
            batch = []
            if self._calls >= self._workers_wanted:
                # A caller (`submit`) holds the last place; its call's end wakes us.
                self._wake.clear()
                return batch
            # With several workers, split what is waiting so they all run.
            share = -(-len(self._pending) // self._workers_wanted)
            while self._pending and len(batch) < min(self._max_batch, share):
                batch.append(self._pending.popitem(last=False)[1])
            # Once closed the event stays set: clearing it after the last
            # batch would leave the other workers waiting forever (and with
            # them the runtime they keep alive).
            if not self._pending and not self._closed:
                self._wake.clear()
            if batch:
                self._calls += 1
            return batch

    def _call_finished(self) -> None:
        """A call ended: a worker may take what waits; the last one out of a closed batcher retires it."""
        with self._lock:
            self._calls -= 1
            if self._pending or self._closed:
                self._wake.set()
            last = self._closed and self._running == 0 and self._calls == 0
        if last:
            self._retire()

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0 and self._calls == 0 and self._closed
            if last:
                self._retire()

    def _serve(self) -> None:
        while True:
            self._wake.wait()
            batch = self._take_batch()
            if not batch:
                with self._lock:
                    done = self._closed and not self._pending
                if done:
                    return
                continue
            try:
                self._run_batch(batch)
            except Exception as exc:  # noqa: BLE001 - whatever happens, the worker goes on
                self._batch_crashed(batch, exc)
            finally:
                self._call_finished()

    def _batch_crashed(self, batch: list[PendingFrame], exc: Exception) -> None:
        """A bug outside the model call (ours or the runtime's): the frames of
        this batch are answered, never left to time out."""
        self._failed(exc, "batch")
        for ticket in batch:
            if not ticket.done:
                ticket.fail(ModelUnavailable(f"Model '{self.name}' failed on this batch: {type(exc).__name__}."))

    def _failed(self, exc: Exception, what: str) -> None:
        """Count a failed call; the traceback once per model, then one line each."""
        self.failed_calls += 1
        log.warning("model %s failed on a %s: %s: %.300s", self.name, what, type(exc).__name__, exc,
                    exc_info=not self._failure_logged)
        self._failure_logged = True

    def _call(self, batch: list[PendingFrame]) -> tuple[np.ndarray | None, dict, tuple[float, float]]:
        """One model call, its output checked against the frames it answers.

        Returns the outputs of the frames whose input could be made, in
        order, {index in batch: ServingError} for those whose could not, and
        the CPU seconds spent decoding and in the model.
        """
        # Stacked on the native thread: numpy releases the GIL to copy, and
        # on the event loop that hands the GIL to a busy decoder and waits.
        # A model whose calls are measured short runs on the frame path's own
        # few threads; a long call there would hold up every fast model.
        short = 0.0 < self.mean_call_cpu_seconds < SHORT_CALL_SECONDS
        run = self._concurrency.run_short if short else self._concurrency.run_blocking
        outputs, refused, cpu = run(_stack_and_run, self._predict, [ticket.tensor for ticket in batch])
        expected = len(batch) - len(refused)
        if expected and (getattr(outputs, "ndim", 0) < 1 or len(outputs) != expected):
            rows = len(outputs) if getattr(outputs, "ndim", 0) >= 1 else 0
            raise RuntimeContractError(f"the runtime returned {rows} rows for {expected} frames")
        return outputs, refused, cpu

    def _run_batch(self, batch: list[PendingFrame]) -> None:
        started = time.perf_counter()
        try:
            outputs, refused, (decode_cpu, model_cpu) = self._call(batch)
        except Exception as exc:  # a model that raises must not kill the worker
            if len(batch) > 1:
                # One client's frame must not fail the others batched with it:
                # run them one by one, so only the frames that fail get an error.
                for ticket in batch:
                    self._run_batch([ticket])
                return
            self._failed(exc, "frame")
            batch[0].fail(ModelUnavailable(f"Model '{self.name}' failed on this frame: {type(exc).__name__}."))
            return
        elapsed = time.perf_counter() - started
        self.calls += 1
        per_frame = elapsed / len(batch)
        decode_ms = [_decode_ms(ticket.tensor) for ticket in batch]
        inference_ms = max(0.0, elapsed * 1000.0 - sum(decode_ms))
        answered = len(batch) - len(refused)
        if not self._runs_on_caller:
            decode_cpu, model_cpu = sum(decode_ms) / 1000.0, inference_ms / 1000.0
        call_cpu, model_per_frame = decode_cpu + model_cpu, model_cpu / max(1, answered)
        if self.calls == 1:
            self.mean_call_seconds, self.mean_frame_seconds = elapsed, per_frame
            self.mean_call_cpu_seconds, self.mean_inference_seconds = call_cpu, model_per_frame
        else:
            self.mean_call_seconds = 0.8 * self.mean_call_seconds + 0.2 * elapsed
            self.mean_frame_seconds = 0.8 * self.mean_frame_seconds + 0.2 * per_frame
            self.mean_call_cpu_seconds = 0.8 * self.mean_call_cpu_seconds + 0.2 * call_cpu
            if answered:  # a batch of undecodable images says nothing of the model
                self.mean_inference_seconds = 0.8 * self.mean_inference_seconds + 0.2 * model_per_frame
        row = 0
        for i, ticket in enumerate(batch):
            if i in refused:
                ticket.fail(refused[i])
                continue
            ticket.resolve(FrameResult(
                output=outputs[row],
                queue_ms=(started - ticket.enqueued) * 1000.0,
                inference_ms=inference_ms,
                batch_size=answered,
                decode_ms=decode_ms[i],
            ))
            row += 1


def _decode_ms(item) -> float:
    return item.decode_ms if isinstance(item, DeferredInput) else 0.0


def _stack_and_run(predict: Callable[[np.ndarray], np.ndarray],
                   items: list) -> tuple[np.ndarray | None, dict, tuple[float, float]]:
    """On the native thread: make the deferred inputs, then one model call for the frames that have one.

    Also returns this thread's CPU seconds for the decoding and for the call
    (a multi-threaded runtime's other threads are not counted: a lower bound)."""
    started = time.thread_time()
    tensors, refused = [], {}
    for i, item in enumerate(items):
        if isinstance(item, DeferredInput):
            try:
                tensors.append(item.make())
            except ServingError as exc:  # this frame's image: answered alone
                refused[i] = exc
        else:
            tensors.append(item)
    decoded = time.thread_time()
    outputs = predict(np.stack(tensors)) if tensors else None
    return outputs, refused, (decoded - started, time.thread_time() - decoded)


def batcher_factory(concurrency, max_batch: int):
    """`make_batcher` for `ModelRegistry`: one `ModelBatcher` per loaded version."""

    def make_batcher(name: str, predict, workers: int, on_retired, runs_on_caller: bool = False) -> ModelBatcher:
        return ModelBatcher(name, predict, concurrency, max_batch, workers=workers, on_retired=on_retired,
                            runs_on_caller=runs_on_caller)

    return make_batcher
