"""The HTTP API and health probes, against the real server in both async modes."""

from __future__ import annotations

import requests

from images import b64, data_url, encode, noise_image, shape_image

DEMO_LABELS = ["circle", "square", "triangle", "star"]


def predict_url(server, model="shapes"):
    return f"{server.url}/api/models/{model}/predict"


def assert_label(response, expected, top_k=5, model="shapes"):
    """A 200 whose body is the `label` object, with `expected` on top."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == model and body["version"], body
    scores = [item["score"] for item in body["labels"]]
    assert len(scores) == min(top_k, len(DEMO_LABELS)) and scores == sorted(scores, reverse=True), body
    assert {item["label"] for item in body["labels"]} <= set(DEMO_LABELS)
    assert body["labels"][0]["label"] == expected, body
    return body


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert len(body["error"]["message"]) > 10


def test_health_and_readiness(server):
    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(server.url + "/readyz", timeout=5)
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True and body["default_model"]["name"] == "shapes", body
    assert body["default_model"]["loaded"] is True, body


def test_model_list_and_details(server):
    models = requests.get(server.url + "/api/models", timeout=10).json()["models"]
    by_name = {m["name"]: m for m in models}
    assert {"shapes", "tiny", "legacy", "broken"} <= set(by_name)
    assert set(by_name["shapes"]) >= {"name", "version", "loaded", "input", "labels"}
    details = requests.get(server.url + "/api/models/shapes", timeout=60).json()
    assert details["labels"] == DEMO_LABELS
    assert details["input"] == {"height": 64, "width": 64, "channels": 3}
    assert details["preprocess"] == "raw"
    assert details["runtime"] in ("tensorflow", "litert", "litert-int8")
    assert details["version"] == by_name["shapes"]["version"]


def test_unknown_api_route_and_wrong_method_have_their_own_codes(server):
    assert_error(requests.get(server.url + "/api/nothing-here", timeout=10), 404, "not_found")
    wrong = requests.delete(server.url + "/api/models", timeout=10)
    assert_error(wrong, 405, "method_not_allowed")
    assert wrong.headers["Allow"] and "GET" in wrong.headers["Allow"]
    wrong = requests.get(server.url + "/api/models/shapes/predict", timeout=10)
    assert_error(wrong, 405, "method_not_allowed")
    assert "POST" in wrong.headers["Allow"]


def test_unknown_model_details_is_404(server):
    assert_error(requests.get(server.url + "/api/models/nope", timeout=10), 404, "unknown_model")


def test_predict_multipart_upload(server):
    jpeg = encode(shape_image("circle", seed=1))
    response = requests.post(predict_url(server), files={"file": ("c.jpg", jpeg, "image/jpeg")},
                             data={"top_k": "2"}, timeout=30)
    body = assert_label(response, "circle", top_k=2)
    assert set(body["timing"]) >= {"decode_ms", "queue_ms", "inference_ms", "total_ms"}


def test_predict_json_base64_and_data_url(server):
    jpeg = encode(shape_image("square", seed=2))
    for image in (b64(jpeg), data_url(jpeg)):
        response = requests.post(predict_url(server), json={"image": image, "id": "x", "top_k": 1}, timeout=30)
        assert assert_label(response, "square", top_k=1)["id"] == "x"


def test_predict_raw_image_body(server):
    png = encode(shape_image("triangle", seed=4), "PNG")
    response = requests.post(predict_url(server), data=png, headers={"Content-Type": "image/png"}, timeout=30)
    assert_label(response, "triangle")
    # top_k as a query parameter
    response = requests.post(predict_url(server) + "?top_k=2", data=png, headers={"Content-Type": "image/png"},
                             timeout=30)
    assert_label(response, "triangle", top_k=2)


def test_predict_chunked_upload(server):
    """A body sent with Transfer-Encoding: chunked (no Content-Length), as streaming clients do."""
    jpeg = encode(shape_image("square", seed=2))
    response = requests.post(predict_url(server), data=iter([jpeg[:1000], jpeg[1000:]]),
                             headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert_label(response, "square")


def test_predict_errors(server):
    jpeg = encode(noise_image())
    circle = encode(shape_image("circle", seed=1))
    assert_error(requests.post(predict_url(server), files={"other": ("a", jpeg)}, timeout=10), 400, "bad_request")
    assert_error(requests.post(predict_url(server), files={"file": ("a.jpg", b"nope")}, timeout=10), 400, "bad_image")
    assert_error(requests.post(predict_url(server), json={"image": "***"}, timeout=10), 400, "bad_image")
    assert_error(requests.post(predict_url(server), json=["not", "an", "object"], timeout=10), 400, "bad_request")
    assert_error(requests.post(predict_url(server), data="text", headers={"Content-Type": "text/plain"},
                               timeout=10), 400, "bad_request")
    assert_error(requests.post(predict_url(server, "nope"), files={"file": ("a.jpg", jpeg)}, timeout=10),
                 404, "unknown_model")
    # Trying to load it runs the converter, then TensorFlow: generous on a busy machine.
    assert_error(requests.post(predict_url(server, "broken"), files={"file": ("a.jpg", jpeg)}, timeout=180),
                 503, "model_unavailable")
    big = b"\xff" * (6 * 1024 * 1024)
    assert_error(requests.post(predict_url(server), files={"file": ("big.jpg", big)}, timeout=30), 413, "too_large")
    # and the server still answers, with the right label
    assert_label(requests.post(predict_url(server), files={"file": ("a.jpg", circle)}, timeout=30), "circle")


def test_index_page_lists_models(server):
    page = requests.get(server.url + "/", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "/capture?model=shapes" in page.text
    for name in ("tiny", "legacy", "broken"):  # every model of the store, not only the default
        assert name in page.text, name


def test_not_ready_without_the_default_model(client):
    """An app whose default model is missing reports 503 with the reason."""
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["ready"] is False
    assert body["default_model"]["name"] == "shapes" and body["default_model"]["loaded"] is False, body
