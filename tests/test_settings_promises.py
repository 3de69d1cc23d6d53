"""Settings of the README's table that no other test changes, each seen from outside.

One server: no default model (`DEFAULT_MODEL=`), `MODELS_PRELOAD=tiny`,
`DEFAULT_TOP_K=2`, `RUNTIME=tensorflow`. And the bound on the recent errors
the dashboard shows (20, oldest dropped), read from `/api/status`.
"""

from __future__ import annotations

import time

import pytest
import requests

from images import encode, shape_image
from serverproc import ServerProcess


@pytest.fixture(scope="module")
def server(model_store, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("settings")
    with ServerProcess(log_dir=workdir, env={"MODEL_STORE": str(model_store), "DEFAULT_MODEL": "",
                                             "MODELS_PRELOAD": "tiny", "DEFAULT_TOP_K": "2",
                                             "RUNTIME": "tensorflow",
                                             "MODEL_CACHE_DIR": str(workdir / "cache")}) as proc:
        proc.start()
        yield proc


def models_by_name(server) -> dict:
    return {m["name"]: m for m in requests.get(server.url + "/api/models", timeout=30).json()["models"]}


def test_no_default_model_is_ready_once_the_store_answers_and_preloads_load_unasked(server):
    # Ready without any model loaded: nothing to wait for but the store.
    deadline = time.monotonic() + 60
    while (ready := requests.get(server.url + "/readyz", timeout=10)).status_code != 200:
        assert time.monotonic() < deadline, (ready.status_code, ready.text)
        time.sleep(0.1)
    # MODELS_PRELOAD: loaded in the background, no frame asked for it; nothing else is.
    while not (listed := models_by_name(server))["tiny"]["loaded"]:
        assert time.monotonic() < deadline, listed
        time.sleep(0.2)
    assert not any(m["loaded"] for name, m in listed.items() if name != "tiny"), listed


def test_default_top_k_applies_when_the_frame_does_not_say(server):
    image = encode(shape_image("star", seed=8))
    with server.client() as client:
        default = client.call("frame", {"model": "shapes", "image": image})
        asked = client.call("frame", {"model": "shapes", "image": image, "top_k": 4})
    assert len(default["labels"]) == 2 and len(asked["labels"]) == 4, (default, asked)
    over_http = requests.post(server.url + "/api/models/shapes/predict",
                              files={"file": ("s.jpg", image, "image/jpeg")}, timeout=60).json()
    assert len(over_http["labels"]) == 2, over_http


def test_runtime_tensorflow_serves_with_tensorflow_even_beside_a_litert_file(server):
    # The demo model ships a model.tflite; RUNTIME=tensorflow does not use it.
    with server.client() as client:
        answer = client.call("frame", {"model": "shapes", "image": encode(shape_image("circle"))})
    assert answer["runtime"] == "tensorflow", answer
    assert requests.get(server.url + "/api/models/shapes", timeout=60).json()["runtime"] == "tensorflow"


def test_the_dashboard_keeps_the_20_most_recent_errors(server):
    with server.client() as client:
        for i in range(5):  # the oldest five: bad_request
            assert client.call("frame", {"model": "shapes", "image": encode(shape_image("circle")),
                                         "top_k": 0})["code"] == "bad_request"
        for i in range(20):  # then twenty bad_image
            assert client.call("frame", {"model": "shapes", "image": b"not an image %d" % i})["code"] == "bad_image"
    errors = requests.get(server.url + "/api/status", timeout=30).json()["recent_errors"]
    assert len(errors) == 20, errors
    assert {e["code"] for e in errors} == {"bad_image"}, errors  # the five older ones were dropped
    times = [e["at"] for e in errors]
    assert times == sorted(times, reverse=True)  # newest first, each with its time


def test_socketio_pings_every_25_seconds_to_keep_idle_websockets_open(server):
    """Heroku closes a websocket idle for 55 s: the Engine.IO handshake tells every
    client to expect a ping every 25 s, which keeps it open."""
    opened = requests.get(server.url + "/socket.io/?EIO=4&transport=polling", timeout=10).text
    handshake = __import__("json").loads(opened[opened.index("{"):])
    assert handshake["pingInterval"] == 25000, handshake
    assert handshake["pingInterval"] + handshake["pingTimeout"] < 55000, handshake
