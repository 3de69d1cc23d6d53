"""The model batcher, in process: what a failing frame does to the frames batched with it."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from webapp.server.async_mode import ThreadingConcurrency
from webapp.errors import BadImage, ModelUnavailable, Superseded
from webapp.frames.batching import SHORT_CALL_SECONDS, DeferredInput, ModelBatcher

pytestmark = pytest.mark.quick  # in `make test-fast`


class SubmittedElsewhere:
    """A frame submitted from a thread of its own, as the server's handlers
    submit: a model that is idle runs the frame in its caller."""

    def __init__(self, batcher: ModelBatcher, key, tensor):
        self._box: dict = {}
        self._thread = threading.Thread(target=self._submit, args=(batcher, key, tensor), daemon=True)
        self._thread.start()

    def _submit(self, batcher, key, tensor):
        try:
            self._box["ticket"] = batcher.submit(key, tensor)
        except Exception as exc:  # noqa: BLE001 - re-raised by wait()
            self._box["error"] = exc

    def wait(self, timeout: float):
        self._thread.join(timeout)
        if "error" in self._box:
            raise self._box["error"]
        return self._box["ticket"].wait(timeout)


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
    first = SubmittedElsewhere(batcher, "warm", np.full((2, 2, 1), 99, np.float32))
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


def test_a_runtime_that_answers_too_few_rows_fails_its_frames_and_the_worker_goes_on():
    def predict(batch: np.ndarray) -> np.ndarray:
        rows = batch.reshape(len(batch), -1)[:, :2]
        return rows[rows[:, 0] >= 0]  # drops the rows of "negative" frames, as a buggy model might

    batcher = ModelBatcher("m", predict, ThreadingConcurrency(), max_batch=8, workers=1)
    bad = batcher.submit("a", np.full((2, 2, 1), -1, np.float32))
    with pytest.raises(ModelUnavailable, match="failed on this frame"):
        bad.wait(10)
    assert batcher.submit("a", np.full((2, 2, 1), 5, np.float32)).wait(10).output.tolist() == [5.0, 5.0]
    assert batcher.failed_calls >= 1
    batcher.close()


def test_an_exception_outside_the_model_call_answers_the_batch_and_the_worker_goes_on(monkeypatch):
    batcher = ModelBatcher("m", lambda batch: batch.reshape(len(batch), -1), ThreadingConcurrency(), max_batch=8)
    original, calls = batcher._run_batch, []

    def broken_once(batch):  # a bug of our own after the call, e.g. in the book-keeping
        calls.append(len(batch))
        if len(calls) == 1:
            raise KeyError("book-keeping")
        original(batch)

    monkeypatch.setattr(batcher, "_run_batch", broken_once)
    with pytest.raises(ModelUnavailable, match="failed on this batch"):
        batcher.submit("a", np.ones((1, 1, 1), np.float32)).wait(10)
    assert batcher.submit("a", np.ones((1, 1, 1), np.float32)).wait(10).output.tolist() == [1.0]
    assert batcher.failed_calls == 1
    batcher.close()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_a_closed_batcher_answers_its_queue_then_every_worker_exits_and_the_runtime_is_released(workers):
    started, gate, released = threading.Event(), threading.Event(), threading.Event()

    def predict(batch):
        started.set()
        gate.wait(10)
        return batch.reshape(len(batch), -1)

    batcher = ModelBatcher("m", predict, ThreadingConcurrency(), max_batch=2, workers=workers,
                           on_retired=released.set)
    tickets = [SubmittedElsewhere(batcher, "client-0", np.zeros((1, 1, 1), np.float32))]
    assert started.wait(10)  # the first frame's call runs (in its caller) and waits
    tickets += [batcher.submit(f"client-{i}", np.full((1, 1, 1), i, np.float32)) for i in range(1, 7)]
    batcher.close()
    assert not released.is_set()  # frames are still waiting: the runtime stays
    gate.set()
    assert [t.wait(10).output.tolist() for t in tickets] == [[float(i)] for i in range(7)]
    assert released.wait(10) and batcher.retired
    for worker in batcher._workers:  # none left waiting on the wake event
        worker.join(10)
        assert not worker.is_alive()


def test_a_batcher_closed_before_any_frame_releases_at_once():
    released = threading.Event()
    ModelBatcher("m", lambda b: b, ThreadingConcurrency(), max_batch=2, on_retired=released.set).close()
    assert released.is_set()


def _held_batcher(predict_rows):
    """A one-worker batcher whose first call waits on `gate`, so later frames queue together."""
    started, gate, batch_sizes = threading.Event(), threading.Event(), []

    def predict(batch: np.ndarray) -> np.ndarray:
        batch_sizes.append(len(batch))
        if (batch == 99).any():
            started.set()
            gate.wait(10)
        return predict_rows(batch)

    batcher = ModelBatcher("m", predict, ThreadingConcurrency(), max_batch=8, workers=1)
    first = SubmittedElsewhere(batcher, "warm", np.full((1, 1, 1), 99, np.float32))
    assert started.wait(10)
    return batcher, first, gate, batch_sizes


def test_frames_decoded_with_their_batch_fail_alone_when_their_image_does():
    """Deferred inputs are made on the model's thread; a bad image is answered bad_image, the rest labels."""
    batcher, first, gate, batch_sizes = _held_batcher(lambda batch: batch.reshape(len(batch), -1) * 2.0)

    def decode(value):
        if value < 0:
            raise BadImage("The image is truncated or corrupt.")
        return np.full((1, 1, 1), value, np.float32)

    tickets = {key: batcher.submit(key, DeferredInput(decode, value))
               for key, value in (("a", 1), ("corrupt", -1), ("b", 2))}
    tickets["c"] = batcher.submit("c", np.full((1, 1, 1), 3, np.float32))  # decoded before, as large images are
    gate.set()
    first.wait(10)
    with pytest.raises(BadImage):
        tickets["corrupt"].wait(10)
    results = {key: tickets[key].wait(10) for key in ("a", "b", "c")}
    assert {key: r.output.tolist() for key, r in results.items()} == {"a": [2.0], "b": [4.0], "c": [6.0]}
    assert batch_sizes == [1, 3]  # one call for the three good frames, none for the corrupt one alone
    assert all(r.batch_size == 3 for r in results.values())
    assert results["a"].decode_ms > 0 and results["c"].decode_ms == 0  # decoded in the hop, or before it
    batcher.close()


def test_a_superseded_frame_is_never_decoded():
    batcher, first, gate, _ = _held_batcher(lambda batch: batch.reshape(len(batch), -1))
    decoded = []

    def decode(value):
        decoded.append(value)
        return np.full((1, 1, 1), value, np.float32)

    older = batcher.submit("client", DeferredInput(decode, 1))
    newer = batcher.submit("client", DeferredInput(decode, 2))
    with pytest.raises(Superseded):
        older.wait(10)
    gate.set()
    first.wait(10)
    assert newer.wait(10).output.tolist() == [2.0]
    assert decoded == [2]  # the superseded frame cost no decoding
    batcher.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_calls_never_outnumber_the_interpreters_whoever_runs_them(workers):
    """Callers run frames for an idle model themselves, workers run what
    queues: together never more calls at once than the runtime has
    interpreters, and every frame is answered with its own row."""
    lock, running, most = threading.Lock(), [0], [0]

    def predict(batch):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        threading.Event().wait(0.002)
        with lock:
            running[0] -= 1
        return batch.reshape(len(batch), -1)

    batcher = ModelBatcher("m", predict, ThreadingConcurrency(), max_batch=4, workers=workers)
    results = {}

    def client(index: int) -> None:
        for n in range(25):
            value = index * 100 + n
            try:
                results[value] = batcher.submit(f"client-{index}", np.full((1, 1, 1), value, np.float32)).wait(10)
            except Superseded:
                results[value] = None

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    batcher.close()
    assert len(results) == 200
    assert all(r.output.tolist() == [float(v)] for v, r in results.items() if r is not None)
    assert 1 <= most[0] <= workers


class RecordingConcurrency(ThreadingConcurrency):
    """Threading mode, noting which threads each model call was sent to."""

    def __init__(self):
        self.sent_to = []

    def run_short(self, fn, *args):
        self.sent_to.append("frame threads")
        return fn(*args)

    def run_blocking(self, fn, *args, **kwargs):
        self.sent_to.append("tpool")
        return super().run_blocking(fn, *args, **kwargs)


@pytest.mark.parametrize("runs_on_caller", [True, False])
def test_a_model_kept_waiting_for_a_core_is_still_measured_by_its_own_time(runs_on_caller):
    """Where frames are decoded and which threads run a call are decided on the
    model's measured time. On busy cores a fast LiteRT call spends most of its
    wall time waiting (here: sleeping, which uses no CPU, as waiting for a core
    or the GIL does): measured by the calling thread's CPU it stays fast, and
    its calls go to the frame threads once measured. A runtime whose own
    threads do the work (TensorFlow) is measured by the clock, and its 30 ms
    calls stay off the frame threads."""

    def predict(batch):
        time.sleep(0.03)
        return batch.reshape(len(batch), -1)

    concurrency = RecordingConcurrency()
    batcher = ModelBatcher("m", predict, concurrency, max_batch=8, workers=1, runs_on_caller=runs_on_caller)
    try:
        for n in range(3):
            batcher.submit(f"client-{n}", np.zeros((1, 1, 1), np.float32)).wait(10)
        assert batcher.mean_call_seconds >= 0.03  # the clock saw every wait
        if runs_on_caller:
            assert batcher.mean_inference_seconds < 0.005 and batcher.mean_call_cpu_seconds < SHORT_CALL_SECONDS
            assert concurrency.sent_to == ["tpool", "frame threads", "frame threads"]  # the first is unmeasured
        else:
            assert batcher.mean_inference_seconds >= 0.03 and batcher.mean_call_cpu_seconds >= 0.03
            assert concurrency.sent_to == ["tpool"] * 3
    finally:
        batcher.close()


def test_frames_that_all_fail_leave_no_record_of_their_clients(monkeypatch):
    """Every HTTP request is a client of its own; if every one's image fails
    (so no answer ever asks for the load hint), what the model's queue keeps
    about them must not grow with the requests. (The load hint counts the
    clients of the last 2 s; here that window is made 0 s, so that every
    client has left it by the next sweep.)"""
    import gc
    import tracemalloc

    monkeypatch.setattr("webapp.frames.batching.HINT_WINDOW_SECONDS", 0.0)

    def refuse():
        raise BadImage("not an image")

    batcher = ModelBatcher("m", lambda batch: batch.reshape(len(batch), -1)[:, :2], ThreadingConcurrency(),
                           max_batch=8, workers=1)

    def send(count: int, first: int) -> None:
        refused = 0
        for index in range(first, first + count):
            try:
                batcher.submit(f"http-{index:08d}", DeferredInput(refuse)).wait(10)
            except BadImage:
                refused += 1
        assert refused == count

    send(1000, 0)  # the queue's own structures, warmed up
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        send(20_000, 1000)
        gc.collect()  # a failed frame's exception and stack are a cycle: garbage, not kept
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 20,000 distinct clients, each remembered, kept 2.4 MB.
    assert kept < 200_000, f"{kept} bytes kept after 20,000 failed frames from distinct clients"
