"""A model that raises on one frame of a shared call: the other frames of that
call still get their labels (README, "Hostile input, limits and faults").

The frames are made to share one call for certain: the server signals when a
call starts and holds it (tests/callsignals.py) while the other clients'
frames queue behind it, as the server's own queue depth confirms. Then the
calls it makes are counted: one of all the queued frames, which fails, then
each frame again on its own.
"""

from __future__ import annotations

import time

import pytest
import requests
from PIL import Image

import modelfactory as mf
from callsignals import SignallingServer
from images import encode

DARK = encode(Image.new("RGB", (64, 64), (0, 0, 0)), "PNG")
BRIGHT = encode(Image.new("RGB", (64, 64), (250, 250, 250)), "PNG")


@pytest.fixture(scope="module")
def exploding_server(tmp_path_factory):
    store = tmp_path_factory.mktemp("exploding-store")
    mf.save_directory_model(store, "exploding", mf.exploding_cnn(), labels=["a", "b", "c"])
    workdir = tmp_path_factory.mktemp("exploding")
    calls = workdir / "calls"
    calls.mkdir()
    # One interpreter: one worker, so every queued frame goes to the same next call.
    with SignallingServer(calls, log_dir=workdir,
                          env={"MODEL_STORE": str(store), "DEFAULT_MODEL": "exploding", "LITERT_INTERPRETERS": "1",
                               "MODEL_CACHE_DIR": str(workdir / "cache")}) as proc:
        proc.start()
        proc.wait_ready()
        yield proc


def queue_depth(server, model) -> int:
    status = requests.get(server.url + "/api/status", timeout=10).json()
    return sum(m["queue_depth"] for m in status["models"] if m["name"] == model)


def test_frames_sharing_a_call_with_a_failing_frame_get_their_labels(exploding_server):
    server = exploding_server
    clients = [server.client() for _ in range(6)]
    try:
        assert "labels" in clients[0].call("frame", {"model": "exploding", "image": DARK})
        before = len(server.started_calls("exploding"))
        server.hold("exploding")
        try:
            clients[0].emit("frame", {"model": "exploding", "image": DARK, "id": "holder"})
            server.wait_for_calls("exploding", before + 1)  # running, and held
            kinds = {1: BRIGHT, 2: DARK, 3: DARK, 4: BRIGHT, 5: DARK}
            for i, image in kinds.items():
                clients[i].emit("frame", {"model": "exploding", "image": image, "id": i})
            deadline = time.monotonic() + 30
            while queue_depth(server, "exploding") < len(kinds):
                assert time.monotonic() < deadline, "the frames never queued"
                time.sleep(0.02)
        finally:
            server.release("exploding")
        holder = clients[0].next("label", timeout=30)
        answers = {}
        for i, image in kinds.items():
            answers[i] = clients[i].next("error" if image is BRIGHT else "label", timeout=30)
    finally:
        for client in clients:
            client.close()
    assert holder["id"] == "holder"
    # Counted per code: every frame answered once, the dark ones with labels, the bright ones failed alone.
    labels = [a for a in answers.values() if "labels" in a]
    errors = [a for a in answers.values() if "code" in a]
    assert sorted(a["id"] for a in labels) == [2, 3, 5], answers
    assert sorted(a["id"] for a in errors) == [1, 4], answers
    assert all(e["code"] == "model_unavailable" and "failed on this frame" in e["message"] for e in errors)
    assert all(len(a["labels"]) == 3 for a in labels)
    # They did share a call: one call of all five (it raised), then each frame again alone.
    assert server.started_calls("exploding")[before:] == [1, 5, 1, 1, 1, 1, 1], server.started_calls("exploding")
    # And the model keeps serving.
    with server.client() as client:
        assert "labels" in client.call("frame", {"model": "exploding", "image": DARK})
