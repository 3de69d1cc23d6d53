"""The HTTP API and health probes, against the real server in both async modes."""

from __future__ import annotations

import requests

from images import b64, data_url, encode, noise_image, shape_image

DEMO_LABELS = ["circle", "square", "triangle", "star"]


def predict_url(server, model="shapes"):
    return f"{server.url}/api/models/{model}/predict"


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert len(body["error"]["message"]) > 10


def test_health_and_readiness(server):
    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(server.url + "/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json()["default_model"]["name"] == "shapes"


def test_model_list_and_details(server):
    models = requests.get(server.url + "/api/models", timeout=10).json()["models"]
    by_name = {m["name"]: m for m in models}
    assert {"shapes", "tiny", "legacy", "broken"} <= set(by_name)
    assert set(by_name["shapes"]) >= {"name", "version", "loaded", "input", "labels"}
    details = requests.get(server.url + "/api/models/shapes", timeout=60).json()
    assert details["labels"] == DEMO_LABELS
    assert details["input"] == {"height": 64, "width": 64, "channels": 3}
    assert details["preprocess"] == "raw"
    assert details["runtime"] in ("tensorflow", "litert")
    assert details["version"] == by_name["shapes"]["version"]


def test_unknown_model_details_is_404(server):
    assert_error(requests.get(server.url + "/api/models/nope", timeout=10), 404, "unknown_model")


def test_predict_multipart_upload(server):
    jpeg = encode(shape_image("circle", seed=1))
    response = requests.post(predict_url(server), files={"file": ("c.jpg", jpeg, "image/jpeg")},
                             data={"top_k": "2"}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "shapes" and len(body["labels"]) == 2
    assert body["labels"][0]["label"] == "circle"
    assert set(body["timing"]) >= {"decode_ms", "queue_ms", "inference_ms", "total_ms"}


def test_predict_json_base64_and_data_url(server):
    jpeg = encode(shape_image("square", seed=2))
    for image in (b64(jpeg), data_url(jpeg)):
        response = requests.post(predict_url(server), json={"image": image, "id": "x", "top_k": 1}, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == "x" and len(body["labels"]) == 1


def test_predict_raw_image_body(server):
    png = encode(shape_image("triangle", seed=4), "PNG")
    response = requests.post(predict_url(server), data=png, headers={"Content-Type": "image/png"}, timeout=30)
    assert response.status_code == 200, response.text


def test_predict_chunked_upload(server):
    """A body sent with Transfer-Encoding: chunked (no Content-Length), as streaming clients do."""
    jpeg = encode(shape_image("square", seed=2))
    response = requests.post(predict_url(server), data=iter([jpeg[:1000], jpeg[1000:]]),
                             headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["labels"][0]["label"] == "square"


def test_predict_errors(server):
    jpeg = encode(noise_image())
    assert_error(requests.post(predict_url(server), files={"other": ("a", jpeg)}, timeout=10), 400, "bad_request")
    assert_error(requests.post(predict_url(server), files={"file": ("a.jpg", b"nope")}, timeout=10), 400, "bad_image")
    assert_error(requests.post(predict_url(server), json={"image": "***"}, timeout=10), 400, "bad_image")
    assert_error(requests.post(predict_url(server), json=["not", "an", "object"], timeout=10), 400, "bad_request")
    assert_error(requests.post(predict_url(server), data="text", headers={"Content-Type": "text/plain"},
                               timeout=10), 400, "bad_request")
    assert_error(requests.post(predict_url(server, "nope"), files={"file": ("a.jpg", jpeg)}, timeout=10),
                 404, "unknown_model")
    assert_error(requests.post(predict_url(server, "broken"), files={"file": ("a.jpg", jpeg)}, timeout=30),
                 503, "model_unavailable")
    big = b"\xff" * (6 * 1024 * 1024)
    assert_error(requests.post(predict_url(server), files={"file": ("big.jpg", big)}, timeout=30), 413, "too_large")
    # and the server still answers
    assert requests.post(predict_url(server), files={"file": ("a.jpg", jpeg)}, timeout=30).status_code == 200


def test_index_page_lists_models(server):
    page = requests.get(server.url + "/", timeout=10)
    assert page.status_code == 200
    assert "shapes" in page.text and "/capture?model=shapes" in page.text


def test_not_ready_without_the_default_model(client):
    """An app whose default model is missing reports 503 with the reason."""
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["ready"] is False
