"""A client's frames keep their sending order, whatever order their threads run in.

In threading mode each Socket.IO handler is handed to a kept thread without
waiting for it to start (`server/handler_threads.py`), so a client's newer
frame can reach the service before the older one. The reader numbers every
event first (`arrival`); here the service and the model's queue are given
frames the wrong way round on purpose and must still let the newest win.

In process, with the real service, gate and batcher; the registry is a
stand-in holding one model whose calls the test holds open.
"""

from __future__ import annotations

import io
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from webapp.config import load_config
from webapp.errors import Superseded, UnknownModel
from webapp.frames.batching import ModelBatcher
from webapp.frames.service import FrameRequest, PredictionService
from webapp.models.modelspec import ModelSpec
from webapp.server.async_mode import ThreadingConcurrency

pytestmark = pytest.mark.quick


class HeldModel:
    """A 2-label model whose calls (those `hold` picks: all, by default) wait
    until `release` is set; `calls` lists each batch's frames' mean pixel."""

    def __init__(self, hold=lambda batch: True):
        self.release, self.called, self.calls = threading.Event(), threading.Semaphore(0), []
        self.hold = hold

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append([round(float(row.mean()), 2) for row in batch])
        if self.hold(batch):
            self.called.release()
            assert self.release.wait(30), "the test never released the model"
        return np.tile(np.array([[0.25, 0.75]], np.float32), (len(batch), 1))


class OneModel:
    """The registry's part the service uses, for one loaded model."""

    def __init__(self, predict, workers: int = 1):
        concurrency = ThreadingConcurrency()
        self.loaded = SimpleNamespace(
            spec=ModelSpec(name="held", version="1", height=8, width=8, channels=1,
                           labels=("no", "yes"), preprocess="raw", output="probabilities"),
            batcher=ModelBatcher("held", predict, concurrency, max_batch=8, workers=workers),
            runtime=SimpleNamespace(name="held"),
        )
        self.concurrency = concurrency

    def acquire(self, name, on_status=None):
        if name != "held":
            raise UnknownModel.named(name)
        return self.loaded

    def known(self, name):
        return name == "held"


def wait_until(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def grey_png(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (8, 8), shade).save(out, "PNG")
    return out.getvalue()


class Sent:
    """One frame answered on a thread of its own, as a handler thread answers it."""

    def __init__(self, service, client: str, frame_id: str, shade: int, arrival: int | None, answered=None):
        self.answer = None
        request = FrameRequest(model="held", image=grey_png(shade), id=frame_id)
        self._thread = threading.Thread(target=self._send, args=(service, request, client, arrival, answered),
                                        daemon=True)
        self._thread.start()

    def _send(self, service, request, client, arrival, answered):
        try:
            self.answer = service.predict(request, client_key=client, arrival=arrival, answered=answered)["id"]
        except Superseded as exc:
            self.answer = exc.code

    def result(self):
        self._thread.join(30)
        assert not self._thread.is_alive(), "the frame was never answered"
        return self.answer


@pytest.fixture
def held():
    model = HeldModel()
    registry = OneModel(model)
    service = PredictionService(registry, registry.concurrency, load_config({"DEFAULT_MODEL": ""}))
    yield service, model
    model.release.set()
    registry.loaded.batcher.close()


def test_an_older_frame_reaching_a_busy_lane_after_a_newer_one_is_superseded(held):
    """Frame 2 holds the client's lane (its model call is running); frame 1,
    sent before it but late, is answered `superseded` at once."""
    service, model = held
    newer = Sent(service, "client", "second", 200, arrival=2)
    assert model.called.acquire(timeout=30)
    older = Sent(service, "client", "first", 100, arrival=1)
    assert older.result() == "superseded"
    model.release.set()
    assert newer.result() == "second"
    assert model.calls == [[200.0]]  # the older frame never reached the model


def test_an_older_frame_reaching_the_queue_after_a_newer_one_leaves_it_waiting(held):
    """Another client keeps the model busy; frame 2 waits in the queue; frame
    1 arrives late and must not replace it."""
    service, model = held
    other = Sent(service, "other", "other", 50, arrival=None)
    assert model.called.acquire(timeout=30)
    newer = Sent(service, "client", "second", 200, arrival=2)
    batcher = service.registry.loaded.batcher
    wait_until(lambda: batcher.depth == 1)
    older = Sent(service, "client", "first", 100, arrival=1)
    assert older.result() == "superseded"
    model.release.set()
    assert (other.result(), newer.result()) == ("other", "second")
    assert model.calls == [[50.0], [200.0]]


def test_frames_in_order_still_supersede_the_waiting_one(held):
    """The usual case is unchanged: a newer frame replaces the client's waiting one."""
    service, model = held
    other = Sent(service, "other", "other", 50, arrival=None)
    assert model.called.acquire(timeout=30)
    batcher = service.registry.loaded.batcher
    first = Sent(service, "client", "first", 100, arrival=1)
    wait_until(lambda: batcher.depth == 1)
    second = Sent(service, "client", "second", 200, arrival=2)
    assert first.result() == "superseded"
    model.release.set()
    assert (other.result(), second.result()) == ("other", "second")


def test_an_older_frame_arriving_after_a_newer_one_was_answered_is_superseded(held):
    """The newer frame ran and was answered before the older one's thread got
    going: the older one is not run, and no older label follows a newer one."""
    service, model = held
    model.release.set()
    answered: dict = {}
    assert service.predict(FrameRequest(model="held", image=grey_png(200), id="second"),
                           client_key="client", arrival=2, answered=answered)["id"] == "second"
    with pytest.raises(Superseded):
        service.predict(FrameRequest(model="held", image=grey_png(100), id="first"),
                        client_key="client", arrival=1, answered=answered)
    assert model.calls == [[200.0]]
    assert service.predict(FrameRequest(model="held", image=grey_png(50), id="third"),
                           client_key="client", arrival=3, answered=answered)["id"] == "third"


def test_an_older_frame_finishing_after_a_newer_one_is_answered_superseded():
    """Frame 1 is held in one interpreter while frame 2 runs in another and
    is answered: frame 1's late result is not sent."""
    model = HeldModel(hold=lambda batch: bool((batch <= 100).all()))
    registry = OneModel(model, workers=3)
    service = PredictionService(registry, registry.concurrency, load_config({"DEFAULT_MODEL": ""}))
    answered: dict = {}
    try:
        # Another client's frame holds the model's first call, so frame 1 goes
        # through the queue to a worker and its lane is free for frame 2.
        other = Sent(service, "other", "other", 50, arrival=None)
        assert model.called.acquire(timeout=30)
        older = Sent(service, "client", "first", 100, arrival=1, answered=answered)
        assert model.called.acquire(timeout=30)
        newer = Sent(service, "client", "second", 200, arrival=2, answered=answered)
        assert newer.result() == "second"
        model.release.set()
        assert (other.result(), older.result()) == ("other", "superseded")
        assert sorted(model.calls) == [[50.0], [100.0], [200.0]]  # frame 1 ran: it was overtaken in the model
    finally:
        model.release.set()
        registry.loaded.batcher.close()


def test_what_a_connection_remembers_holds_only_models_that_answered(held):
    """The per-connection record is bounded by the models that answered: a
    client sending frames for names the store lacks adds nothing to it."""
    service, model = held
    model.release.set()
    answered: dict = {}
    for number in range(1, 201):
        with pytest.raises(UnknownModel):
            service.predict(FrameRequest(model=f"nosuch{number}", image=grey_png(10), id=number),
                            client_key="client", arrival=number, answered=answered)
    service.predict(FrameRequest(model="held", image=grey_png(10), id="real"),
                    client_key="client", arrival=201, answered=answered)
    assert answered == {"held": 201}
    assert service._gates == {}  # no lane left behind either
