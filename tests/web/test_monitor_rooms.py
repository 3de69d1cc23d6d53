"""The monitor room, one process: `monitor` joins every prediction, `{"model": NAME}` one model's.

(Across processes through Redis: tests/server/test_scale_out.py.)
"""

from __future__ import annotations


from images import encode, shape_image


# `server`: the session's server in each async mode (tests/conftest.py).
def predictions(client, count, timeout=30.0):
    return [client.next("prediction", timeout=timeout) for _ in range(count)]


def test_a_monitor_sees_every_prediction_or_only_its_models(server):
    image = encode(shape_image("square", seed=12))
    with server.client() as everything, server.client() as only_tiny, server.client() as user:
        assert everything.call("monitor")["room"] == "monitor"
        assert only_tiny.call("monitor", {"model": "tiny"})["room"] == "monitor:tiny"
        sent = ["shapes", "tiny", "shapes", "tiny", "tiny"]
        answers = [user.call("frame", {"model": model, "image": image, "id": i}) for i, model in enumerate(sent)]
        assert all("labels" in a for a in answers), answers
        seen_all = predictions(everything, 5)
        # Copies reach a client in order: had the shapes ones been sent to the tiny-only
        # monitor, they would come before the last tiny one.
        seen_tiny = predictions(only_tiny, 3)
        # Each copy says what was answered: model, version, runtime, labels, timing, process.
        assert [p["model"] for p in seen_all] == sent
        assert [p["model"] for p in seen_tiny] == ["tiny", "tiny", "tiny"]
        assert [p["labels"] for p in seen_tiny] == [a["labels"] for a in answers if a["model"] == "tiny"]
        for copy, answer in zip(seen_all, answers):
            assert {"model", "version", "runtime", "labels", "timing", "process"} <= set(copy), copy
            assert copy["labels"] == answer["labels"] and copy["version"] == answer["version"]
        assert user.drain("prediction") == []  # not a monitor: no copies


def test_a_connection_watches_a_bounded_number_of_monitor_rooms(server):
    """Rooms last as long as the connection: names that cannot be models are
    refused, and past the cap a clear error, while the rooms already joined
    keep receiving copies and the connection stays open."""
    from webapp.web.socketio_events import MONITOR_ROOMS_PER_CONNECTION

    with server.client() as watcher, server.client() as user:
        refused = watcher.call("monitor", {"model": "x" * 100_000})
        assert refused["code"] == "unknown_model" and len(refused["message"]) < 200, refused["code"]
        assert watcher.call("monitor", {"model": "tiny"})["room"] == "monitor:tiny"
        for index in range(MONITOR_ROOMS_PER_CONNECTION - 1):
            assert watcher.call("monitor", {"model": f"room-{index}"})["room"] == f"monitor:room-{index}"
        over = watcher.call("monitor", {"model": "one-too-many"})
        assert over["code"] == "bad_request" and str(MONITOR_ROOMS_PER_CONNECTION) in over["message"], over
        assert watcher.call("monitor", {"model": "tiny"})["room"] == "monitor:tiny"  # joined already: fine
        answer = user.call("frame", {"model": "tiny", "image": encode(shape_image("circle", seed=3))})
        assert "labels" in answer, answer
        assert watcher.next("prediction", timeout=30)["model"] == "tiny"
