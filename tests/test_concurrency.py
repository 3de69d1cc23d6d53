"""Inference runs off the event loop, and frames that queue share one call.

These use the `slow` test model, a genuinely heavy network (about a second
a frame on 2 cores). Assertions are about order and grouping, not speed.
"""

from __future__ import annotations

import time

import requests

from images import encode, noise_image


def slow_frame(frame_id):
    return {"model": "slow", "image": encode(noise_image(320, 320, seed=hash(frame_id) % 1000)), "id": frame_id}


def test_server_answers_others_during_a_long_inference(server):
    with server.client() as a, server.client() as b:
        a.call("frame", slow_frame("warm"))  # load the slow model first
        b.call("frame", {"model": "tiny", "image": encode(noise_image())})
        a.emit("frame", slow_frame("long"))
        time.sleep(0.2)  # the long inference is now running
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
        details = requests.get(server.url + "/api/models/slow", timeout=30).json()
        busy = max(1, details.get("interpreters", 1))
        for i in range(busy):  # occupy every interpreter
            clients[i].emit("frame", slow_frame(f"busy{i}"))
        time.sleep(0.3)
        waiting = clients[busy:busy + 4]
        for i, client in enumerate(waiting):
            client.emit("frame", slow_frame(f"wait{i}"))
        first = [clients[i].next("label", timeout=60) for i in range(busy)]
        later = [client.next("label", timeout=60) for client in waiting]
    finally:
        for client in clients:
            client.close()
    assert all(label["timing"]["batch_size"] == 1 for label in first)
    # At least one call answered frames from two different clients together.
    assert sum(label["timing"]["batch_size"] >= 2 for label in later) >= 2, [l["timing"] for l in later]
    assert all(label["timing"]["queue_ms"] > 0 for label in later)


def test_a_newer_frame_supersedes_the_waiting_one(server):
    """Latest frame wins: one waiting frame per client and model."""
    helpers = [server.client() for _ in range(2)]
    try:
        with server.client() as a:
            a.call("frame", slow_frame("warm"))
            busy = max(1, requests.get(server.url + "/api/models/slow", timeout=30).json().get("interpreters", 1))
            for i in range(busy):  # every interpreter runs someone's frame
                helpers[i].emit("frame", slow_frame(f"busy{i}"))
            time.sleep(0.3)
            a.emit("frame", slow_frame("waiting"))
            time.sleep(0.1)
            a.emit("frame", slow_frame("newest"))
            error = a.next("error", timeout=60)
            label = a.next("label", timeout=60)
            time.sleep(0.5)
            assert a.drain("label") == []
    finally:
        for helper in helpers:
            helper.close()
    assert error["code"] == "superseded" and error["id"] == "waiting"
    assert label["id"] == "newest"
