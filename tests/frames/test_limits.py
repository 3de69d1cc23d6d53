"""Per-client frame rate and the server-wide bound on waiting frames."""

from __future__ import annotations

import time

import pytest

from images import encode, noise_image
from serverproc import Client, ServerProcess

#: One frame per 10 s, bursts of one: a dozen back-to-back frames (milliseconds
#: each) all fall within one token's refill time, so what is answered does not
#: depend on how fast this machine happens to be.
RATE = 0.1


@pytest.fixture(scope="module")
def limited(model_store, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("limits")
    with ServerProcess(env={"MODEL_STORE": str(model_store), "MODEL_CACHE_DIR": str(workdir),
                            "MAX_FPS_PER_CLIENT": str(RATE), "MAX_WAITING_FRAMES": "3",
                            # TensorFlow: no conversion of the slow model at start-up
                            "RUNTIME": "tensorflow", "DEFAULT_MODEL": "tiny"},
                       log_dir=workdir, async_mode="eventlet") as proc:
        proc.start()
        proc.wait_ready()
        yield proc


def test_a_client_over_its_frame_rate_is_answered_rate_limited(limited):
    image = encode(noise_image())
    with limited.client() as client:
        answers = [client.call("frame", {"model": "tiny", "image": image, "id": i}) for i in range(12)]
        codes = [a.get("code", "label") for a in answers]
        assert codes == ["label"] + ["rate_limited"] * 11, codes
        assert [a["id"] for a in answers] == list(range(12))
        assert "frames per second" in answers[1]["message"]
        assert client.connected  # a rate-limited frame never closes the connection
        # The bucket refills: polled with a deadline, not a sleep guessed from the rate.
        deadline = time.monotonic() + 60
        while True:
            answer = client.call("frame", {"model": "tiny", "image": image, "id": "later"})
            if "labels" in answer:
                break
            assert answer["code"] == "rate_limited" and time.monotonic() < deadline, answer
            time.sleep(0.5)
        # Each client has its own bucket: another one is not limited by the first.
        with limited.client() as other:
            assert other.call("frame", {"model": "tiny", "image": image})["labels"]


class StampingClient(Client):
    """Records when each event arrived, to compare the order of answers across clients."""

    def _recorder(self, name):
        record = super()._recorder(name)

        def stamped(data=None):
            record((time.monotonic(), data))
        return stamped


def test_beyond_the_waiting_bound_frames_are_answered_overloaded_at_once(limited):
    image = encode(noise_image(320, 320))
    with limited.client() as warm:
        warm.call("frame", {"model": "slow", "image": image}, timeout=120)  # loaded
    clients = [StampingClient(limited.url) for _ in range(6)]
    try:
        for i, client in enumerate(clients):
            client.emit("frame", {"model": "slow", "image": image, "id": i})
        outcomes = []
        for client in clients:
            deadline = time.monotonic() + 120
            while True:
                answers = client.drain("error") + client.drain("label")
                if answers:
                    assert len(answers) == 1, answers
                    outcomes.append(answers[0])
                    break
                assert time.monotonic() < deadline, "a frame was never answered"
                time.sleep(0.05)
    finally:
        for client in clients:
            client.close()
    overloaded = [(stamp, o) for stamp, o in outcomes if o.get("code") == "overloaded"]
    labelled = [(stamp, o) for stamp, o in outcomes if "labels" in o]
    # 3 may wait; the first slow frame may finish before the last is sent (then 2).
    assert 2 <= len(overloaded) <= 3, outcomes
    assert len(labelled) == 6 - len(overloaded), outcomes
    assert all("rate" not in o["message"] for _, o in overloaded)
    # "At once": every overloaded answer arrived before the first slow frame was answered.
    assert max(stamp for stamp, _ in overloaded) < min(stamp for stamp, _ in labelled), outcomes
