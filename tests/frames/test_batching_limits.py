"""`MAX_BATCH`: the most frames one model call answers; the rest go in the next call.

The server runs with `tests/hooks` on its PYTHONPATH (callsignals.py): every
model call creates a file as it starts, and a call waits while the test holds
the model. So the test knows for certain that frames queue behind a running
call, and sees the size of every call the model made. No sleeps, no speed.
"""

from __future__ import annotations

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from callsignals import SignallingServer
from conftest import ASYNC_MODES
from images import encode, shape_image

MAX_BATCH = 2
WAITING = 5  # frames that queue behind the held call: more than two batches' worth


@pytest.fixture(scope="module", params=ASYNC_MODES)
def server(request, model_store, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"batching-{request.param}")
    calls = workdir / "calls"
    calls.mkdir()
    # One interpreter: one worker takes what waits, so only MAX_BATCH splits it
    # (with two, the batcher also shares the queue between the workers).
    with SignallingServer(calls, async_mode=request.param, log_dir=workdir,
                          env={"MODEL_STORE": str(model_store), "DEFAULT_MODEL": "shapes",
                               "MAX_BATCH": str(MAX_BATCH), "LITERT_INTERPRETERS": "1",
                               "MODEL_CACHE_DIR": str(workdir / "cache")}) as proc:
        proc.start()
        proc.wait_ready()
        yield proc


def metric(server, name: str, **labels) -> float:
    text = requests.get(server.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_until(predicate, timeout, message):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, message() if callable(message) else message
        time.sleep(0.05)
    return value


def test_frames_over_max_batch_are_split_across_calls(server):
    image = encode(shape_image("star", seed=4))
    clients = [server.client() for _ in range(WAITING + 1)]
    try:
        clients[0].call("frame", {"model": "shapes", "image": image})  # loaded, warmed
        labelled_before = metric(server, "webapp_frames_total", model="shapes", outcome="label")
        before = len(server.started_calls("shapes"))
        server.hold("shapes")
        try:
            clients[0].emit("frame", {"model": "shapes", "image": image, "id": "first"})
            server.wait_for_calls("shapes", before + 1)  # the first call runs, and waits
            # One frame per client (one client's newer frame would supersede its older one).
            for i, client in enumerate(clients[1:]):
                client.emit("frame", {"model": "shapes", "image": image, "id": f"queued{i}"})
            wait_until(lambda: metric(server, "webapp_queue_depth", model="shapes") == WAITING, 60,
                       lambda: f"the frames never all queued: {server.log()[-2000:]}")
        finally:
            server.release("shapes")
        answers = [client.next("label", timeout=60) for client in clients]
        assert all(client.drain("error") == [] for client in clients)
    finally:
        for client in clients:
            client.close()
    sizes = server.started_calls("shapes")[before:]
    # The held call had one frame; the five queued behind it went in calls of at most two.
    assert sizes[0] == 1, sizes
    assert sum(sizes[1:]) == WAITING and max(sizes[1:]) == MAX_BATCH, sizes
    assert len(sizes[1:]) == -(-WAITING // MAX_BATCH), sizes
    # Every answer says how many frames shared its call: never more than MAX_BATCH.
    queued = answers[1:]
    assert [a["id"] for a in queued] == [f"queued{i}" for i in range(WAITING)]
    assert max(a["timing"]["batch_size"] for a in queued) == MAX_BATCH, [a["timing"] for a in queued]
    assert sorted(a["timing"]["batch_size"] for a in queued) == sorted(s for s in sizes[1:] for _ in range(s))
    assert all(a["labels"][0]["label"] == "star" for a in answers)
    # Counted as answered: one label per frame, none lost between the calls.
    assert metric(server, "webapp_frames_total", model="shapes", outcome="label") == labelled_before + WAITING + 1
    assert requests.get(server.url + "/api/models/shapes", timeout=30).json()["batching"]["max_batch"] == MAX_BATCH


# -- LITERT_INTERPRETERS: one worker per interpreter, waiting frames split between them --


@pytest.fixture(scope="module")
def two_interpreters(model_store, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("interpreters")
    calls = workdir / "calls"
    calls.mkdir()
    with SignallingServer(calls, log_dir=workdir,
                          env={"MODEL_STORE": str(model_store), "DEFAULT_MODEL": "shapes",
                               "LITERT_INTERPRETERS": "2", "MODEL_CACHE_DIR": str(workdir / "cache")}) as proc:
        proc.start()
        proc.wait_ready()
        yield proc


def test_each_interpreter_runs_its_own_call_and_waiting_frames_are_split_between_them(two_interpreters):
    server = two_interpreters
    details = requests.get(server.url + "/api/models/shapes", timeout=30).json()
    assert details["runtime"].startswith("litert") and details["interpreters"] == 2, details
    # Used one frame at a time so far: the second interpreter is not built yet
    # (models/test_litert_interpreters.py: when it is).
    assert details["interpreters_made"] == 1, details
    image = encode(shape_image("triangle", seed=6))
    clients = [server.client() for _ in range(6)]
    try:
        clients[0].call("frame", {"model": "shapes", "image": image})
        before = len(server.started_calls("shapes"))
        server.hold("shapes")
        try:
            # Two frames, two calls running at the same time: one per interpreter.
            clients[0].emit("frame", {"model": "shapes", "image": image, "id": "a"})
            server.wait_for_calls("shapes", before + 1)
            clients[1].emit("frame", {"model": "shapes", "image": image, "id": "b"})
            assert server.wait_for_calls("shapes", before + 2)[before:] == [1, 1]
            for i, client in enumerate(clients[2:]):
                client.emit("frame", {"model": "shapes", "image": image, "id": f"queued{i}"})
            wait_until(lambda: metric(server, "webapp_queue_depth", model="shapes") == 4, 60,
                       lambda: server.log()[-2000:])
        finally:
            server.release("shapes")
        answers = [client.next("label", timeout=60) for client in clients]
    finally:
        for client in clients:
            client.close()
    sizes = server.started_calls("shapes")[before:]
    # The four that waited were shared out (the first free worker takes half of
    # what waits, the other the rest), instead of one call of four.
    assert sizes[:2] == [1, 1] and sum(sizes[2:]) == 4, sizes
    assert max(sizes[2:]) == 2 and len(sizes[2:]) >= 2, sizes
    assert [a["timing"]["batch_size"] for a in answers[:2]] == [1, 1]
    assert sorted(a["timing"]["batch_size"] for a in answers[2:]) == sorted(s for s in sizes[2:] for _ in range(s))
    assert all(a["labels"][0]["label"] == "triangle" for a in answers)
