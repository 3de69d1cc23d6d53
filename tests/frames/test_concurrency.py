"""Inference runs off the event loop, and frames that queue share one call.

These use the `slow` test model, a genuinely heavy network (about a second
a frame on 2 cores). Assertions are about order and grouping, not speed.

"The long inference is now running" is not guessed with a sleep: these
servers run with `tests/hooks` on their PYTHONPATH, which makes every model
call create a file (`<model>-<n>-batch<size>`) as it starts; the tests wait
for those files, with a deadline.
"""

from __future__ import annotations

import pytest
import requests

from callsignals import SignallingServer
from conftest import ASYNC_MODES
from images import encode, noise_image


@pytest.fixture(scope="module", params=ASYNC_MODES)
def server(request, model_store, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"concurrency-{request.param}")
    calls = workdir / "calls"
    calls.mkdir()
    with SignallingServer(calls, async_mode=request.param, log_dir=workdir,
                          env={"MODEL_STORE": str(model_store), "DEFAULT_MODEL": "tiny",
                               "MODEL_CACHE_DIR": str(workdir / "cache")}) as proc:
        proc.start()
        proc.wait_ready()
        yield proc


def slow_frame(frame_id):
    return {"model": "slow", "image": encode(noise_image(320, 320, seed=hash(frame_id) % 1000)), "id": frame_id}


def interpreters(server) -> int:
    return max(1, requests.get(server.url + "/api/models/slow", timeout=60).json().get("interpreters", 1))


def test_server_answers_others_during_a_long_inference(server):
    with server.client() as a, server.client() as b:
        a.call("frame", slow_frame("warm"))  # load the slow model first
        b.call("frame", {"model": "tiny", "image": encode(noise_image())})
        before = len(server.started_calls("slow"))
        a.emit("frame", slow_frame("long"))
        server.wait_for_calls("slow", before + 1)  # the long inference is now running
        assert requests.get(server.url + "/healthz", timeout=30).status_code == 200
        other = b.call("frame", {"model": "tiny", "image": encode(noise_image(seed=3)), "id": "quick"})
        assert other["id"] == "quick" and other["labels"]
        # Both were answered while the slow frame was still being computed.
        assert a.drain("label") == []
        assert a.next("label", timeout=60)["id"] == "long"
        assert a.connected and b.connected


def test_frames_waiting_for_a_busy_model_share_the_next_call(server):
    """While every interpreter of the model is busy, frames from several clients
    queue; a freed interpreter takes them together in one call."""
    clients = [server.client() for _ in range(6)]
    try:
        clients[0].call("frame", slow_frame("warm"))
        busy = interpreters(server)
        before = len(server.started_calls("slow"))
        for i in range(busy):  # occupy every interpreter
            clients[i].emit("frame", slow_frame(f"busy{i}"))
        assert server.wait_for_calls("slow", before + busy)[before:] == [1] * busy
        waiting = clients[busy:busy + 4]
        for i, client in enumerate(waiting):
            client.emit("frame", slow_frame(f"wait{i}"))
        first = [clients[i].next("label", timeout=60) for i in range(busy)]
        later = [client.next("label", timeout=60) for client in waiting]
    finally:
        for client in clients:
            client.close()
    assert [label["id"] for label in first] == [f"busy{i}" for i in range(busy)]
    assert [label["id"] for label in later] == [f"wait{i}" for i in range(4)]
    assert all(label["timing"]["batch_size"] == 1 for label in first)
    # The 4 waiting frames were answered by fewer calls than frames: some shared one.
    sizes = server.started_calls("slow")[before + busy:]
    assert sum(sizes) == 4 and len(sizes) < 4, sizes
    assert sorted(label["timing"]["batch_size"] for label in later) == sorted(
        size for size in sizes for _ in range(size)), (sizes, [l["timing"] for l in later])
    assert all(label["timing"]["queue_ms"] > 0 for label in later)


def test_a_newer_frame_supersedes_the_waiting_one(server):
    """Latest frame wins: one waiting frame per client and model."""
    helpers = [server.client() for _ in range(2)]
    try:
        with server.client() as a:
            a.call("frame", slow_frame("warm"))
            busy = interpreters(server)
            before = len(server.started_calls("slow"))
            for i in range(busy):  # every interpreter runs someone's frame
                helpers[i].emit("frame", slow_frame(f"busy{i}"))
            server.wait_for_calls("slow", before + busy)
            a.emit("frame", slow_frame("waiting"))  # one socket: these arrive in this order
            a.emit("frame", slow_frame("newest"))
            error = a.next("error", timeout=60)
            label = a.next("label", timeout=60)
            for i in range(busy):
                assert helpers[i].next("label", timeout=60)["id"] == f"busy{i}"
            assert a.drain("label") == [] and a.drain("error") == []
    finally:
        for helper in helpers:
            helper.close()
    assert error["code"] == "superseded" and error["id"] == "waiting"
    assert label["id"] == "newest"
    # The waiting frame never reached the model: one call after the busy ones, for the newest.
    assert server.started_calls("slow")[before + busy:] == [1]
