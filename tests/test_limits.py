"""Per-client frame rate and the server-wide bound on waiting frames."""

from __future__ import annotations

import time

import pytest

from images import encode, noise_image
from serverproc import ServerProcess


@pytest.fixture(scope="module")
def limited(model_store, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("limits")
    proc = ServerProcess(env={"MODEL_STORE": str(model_store), "MODEL_CACHE_DIR": str(workdir),
                              "MAX_FPS_PER_CLIENT": "5", "MAX_WAITING_FRAMES": "3",
                              # TensorFlow: no conversion of the slow model at start-up
                              "RUNTIME": "tensorflow", "DEFAULT_MODEL": "tiny"},
                         log_dir=workdir, async_mode="eventlet").start()
    proc.wait_ready()
    yield proc
    proc.stop()


def test_a_client_over_its_frame_rate_is_answered_rate_limited(limited):
    image = encode(noise_image())
    with limited.client() as client:
        started = time.monotonic()
        answers = [client.call("frame", {"model": "tiny", "image": image, "id": i}) for i in range(12)]
        elapsed = time.monotonic() - started
        codes = [a.get("code", "label") for a in answers]
        assert codes[:5] == ["label"] * 5  # a one-second burst passes
        assert set(codes[5:]) <= {"label", "rate_limited"}
        # 5 frames/s: beyond the burst, only what the elapsed time refilled
        assert codes.count("label") <= 5 + int(elapsed * 5) + 1
        assert "rate_limited" in codes
        assert client.connected
        time.sleep(1.0)  # the bucket refills
        assert client.call("frame", {"model": "tiny", "image": image})["labels"]


def test_beyond_the_waiting_bound_frames_are_answered_overloaded_at_once(limited):
    image = encode(noise_image(320, 320))
    clients = [limited.client() for _ in range(6)]
    try:
        clients[0].call("frame", {"model": "slow", "image": image}, timeout=120)  # loaded
        started = time.monotonic()
        for i, client in enumerate(clients):
            client.emit("frame", {"model": "slow", "image": image, "id": i})
        outcomes = []
        for client in clients:
            deadline = time.monotonic() + 60
            while True:
                errors, labels = client.drain("error"), client.drain("label")
                if errors or labels:
                    outcomes.append((errors + labels)[0])
                    break
                assert time.monotonic() < deadline
                time.sleep(0.05)
        overloaded = [o for o in outcomes if o.get("code") == "overloaded"]
        assert len(overloaded) >= 2 and len(overloaded) <= 3
        assert sum("labels" in o for o in outcomes) == 6 - len(overloaded)
        assert time.monotonic() - started < 60
    finally:
        for client in clients:
            client.close()
