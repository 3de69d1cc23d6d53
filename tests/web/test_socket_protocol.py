"""The Socket.IO protocol, end to end, against the real server in both async modes."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests

from images import b64, data_url, encode, noise_image, png_header_claiming, shape_image

DEMO_LABELS = ("circle", "square", "triangle", "star")
MAX_FRAME_BYTES = 4 * 1024 * 1024


def frame(image, model="shapes", **extra):
    return {"model": model, "image": image, **extra}


def assert_label(result, model="shapes", frame_id=None, top_k=5):
    assert set(result) >= {"id", "model", "version", "runtime", "labels", "timing"}, result
    assert result["id"] == frame_id
    assert result["model"] == model
    assert isinstance(result["version"], str) and result["version"]
    scores = [item["score"] for item in result["labels"]]
    assert scores == sorted(scores, reverse=True)
    assert 1 <= len(result["labels"]) <= top_k
    assert set(result["timing"]) >= {"decode_ms", "queue_ms", "inference_ms", "total_ms"}
    assert result["timing"]["total_ms"] >= result["timing"]["inference_ms"] >= 0


def test_binary_frame_gets_label_event(server):
    with server.client() as client:
        client.emit("frame", frame(encode(shape_image("circle")), id="f1"))
        result = client.next("label")
    assert_label(result, frame_id="f1")
    assert {item["label"] for item in result["labels"]} <= set(DEMO_LABELS)
    assert result["runtime"] in ("tensorflow", "litert", "litert-int8")


def test_ack_carries_the_label_instead_of_an_event(server):
    with server.client() as client:
        result = client.call("frame", frame(encode(shape_image("square")), id=7))
        assert_label(result, frame_id=7)
        time.sleep(0.3)
        assert client.drain("label") == []
        error = client.call("frame", frame(b"not an image", id=8))
        assert error["code"] == "bad_image" and error["id"] == 8
        time.sleep(0.3)
        assert client.drain("error") == []


@pytest.mark.parametrize("encoding", ["bytes", "base64", "data_url"])
def test_every_image_encoding_is_accepted(server, encoding):
    jpeg = encode(shape_image("triangle", seed=3))
    image = {"bytes": jpeg, "base64": b64(jpeg), "data_url": data_url(jpeg)}[encoding]
    with server.client() as client:
        result = client.call("frame", frame(image, id=encoding))
    assert_label(result, frame_id=encoding)


def test_demo_model_recognises_drawn_shapes(server):
    """The bundled model tells the four shapes apart on webcam-like frames."""
    correct, total = 0, 0
    with server.client() as client:
        for label in DEMO_LABELS:
            for seed in range(100, 105):
                image = shape_image(label, seed=seed, size=(640, 480))
                result = client.call("frame", frame(encode(image, quality=85)))
                correct += result["labels"][0]["label"] == label
                total += 1
    assert correct >= 0.85 * total, f"{correct}/{total} shapes recognised"


def test_top_k_limits_and_orders_labels(server):
    jpeg = encode(shape_image("star"))
    with server.client() as client:
        two = client.call("frame", frame(jpeg, top_k=2))
        everything = client.call("frame", frame(jpeg, top_k=100))
        default = client.call("frame", frame(jpeg))
    assert len(two["labels"]) == 2
    assert sorted(item["label"] for item in everything["labels"]) == sorted(DEMO_LABELS)
    assert len(default["labels"]) == 4  # default top_k is 5; the model has 4 labels
    assert two["labels"] == everything["labels"][:2]
    # The demo serves its int8 file: probabilities come in steps of 1/256.
    assert abs(sum(item["score"] for item in everything["labels"]) - 1.0) < 1e-2


def test_models_event_lists_the_same_as_http(server):
    over_http = requests.get(server.url + "/api/models", timeout=10).json()
    with server.client() as client:
        acked = client.call("models")
        client.emit("models")
        emitted = client.next("models")
    names = [model["name"] for model in acked["models"]]
    assert {"shapes", "tiny", "legacy", "slow"} <= set(names)
    assert [m["name"] for m in over_http["models"]] == names
    assert [m["name"] for m in emitted["models"]] == names
    shapes = next(m for m in acked["models"] if m["name"] == "shapes")
    assert shapes["loaded"] is True and shapes["labels"] == list(DEMO_LABELS)
    assert shapes["input"] == {"height": 64, "width": 64, "channels": 3}


def _truncated_jpeg():
    data = encode(noise_image(200, 200))
    return data[: len(data) // 2]


BAD_FRAMES = {
    "not an object": ("just a string", "bad_request"),
    "missing model": ({"image": b"x"}, "bad_request"),
    "model not a string": ({"model": 5, "image": b"x"}, "bad_request"),
    "missing image": ({"model": "shapes"}, "bad_request"),
    "image of wrong type": ({"model": "shapes", "image": 12345}, "bad_request"),
    "top_k zero": ({"model": "shapes", "image": b"x", "top_k": 0}, "bad_request"),
    "top_k text": ({"model": "shapes", "image": b"x", "top_k": "3"}, "bad_request"),
    "id an object": ({"model": "shapes", "image": b"x", "id": {"a": 1}}, "bad_request"),
    "non-image bytes": ({"model": "shapes", "image": b"GIF89a but not really"}, "bad_image"),
    "truncated jpeg": ({"model": "shapes", "image": _truncated_jpeg()}, "bad_image"),
    "invalid base64": ({"model": "shapes", "image": "%%%not/base64!!"}, "bad_image"),
    "data url of text": ({"model": "shapes", "image": "data:text/plain;base64," + b64(b"hello")}, "bad_image"),
    "unknown model": ({"model": "no-such-model", "image": b"x"}, "unknown_model"),
    "path in model name": ({"model": "../models/shapes", "image": b"x"}, "unknown_model"),
    "oversize binary": ({"model": "shapes", "image": b"\xff" * (MAX_FRAME_BYTES + 1)}, "too_large"),
    "oversize base64": ({"model": "shapes", "image": "A" * (MAX_FRAME_BYTES * 4 // 3 + 400)}, "too_large"),
    "decompression bomb": ({"model": "shapes", "image": png_header_claiming(100_000, 100_000)}, "too_large"),
    "unloadable model": ({"model": "broken", "image": b"x"}, "model_unavailable"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES), ids=list(BAD_FRAMES))
def test_bad_frames_get_an_error_and_the_connection_stays_open(server, case):
    payload, code = BAD_FRAMES[case]
    if isinstance(payload, dict) and "id" not in payload:
        payload = {**payload, "id": case}
    if code == "model_unavailable":
        payload = {**payload, "image": encode(noise_image())}
    with server.client() as client:
        client.emit("frame", payload)
        # An unloadable model is tried first (a TensorFlow subprocess): slow on a busy machine.
        error = client.next("error", timeout=120 if code == "model_unavailable" else 30)
        assert error["code"] == code, error
        assert isinstance(error["message"], str) and len(error["message"]) > 10
        expected_id = case if isinstance(payload, dict) and payload.get("id") == case else None
        assert error["id"] == expected_id
        # The same connection keeps working.
        assert client.connected
        result = client.call("frame", frame(encode(shape_image("circle")), id="after"))
        assert_label(result, frame_id="after")


def test_first_use_reports_model_status_until_ready(server):
    with server.client() as client:
        result = client.call("frame", frame(encode(noise_image(40, 40)), model="status-probe"))
        statuses = client.drain("model_status")
    assert_label(result, model="status-probe")
    states = [s["state"] for s in statuses]
    assert states[-1] == "ready", statuses
    assert "loading" in states
    assert all(s["model"] == "status-probe" and 0.0 <= s["progress"] <= 1.0 for s in statuses)


def test_legacy_keras2_h5_in_flat_layout_matches_keras2(server, model_store):
    """A Keras 2 HDF5 file at <root>/legacy.h5 serves and agrees with Keras 2 itself."""
    from PIL import Image

    probe = np.load(model_store / "legacy.probe.npy")
    expected = np.load(model_store / "legacy.expected.npy")
    with server.client() as client:
        for pixels, want in zip(probe, expected):
            png = encode(Image.fromarray(pixels.astype(np.uint8)), "PNG")
            result = client.call("frame", frame(png, model="legacy", top_k=3))
            got = {item["label"]: item["score"] for item in result["labels"]}
            assert np.allclose([got["one"], got["two"], got["three"]], want, atol=1e-4)
