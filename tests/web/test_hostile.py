"""Hostile input over Socket.IO and HTTP, against one server shared by projects.

Every case gets its documented error code (or, for images the server must
accept, a label), the connection that sent it stays usable, and after the
whole suite the same server still answers good frames on both transports.
Tests in this module run in file order and share the server on purpose.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import numpy as np
import pytest
import requests
import socketio
import websocket
from PIL import Image

from images import b64, data_url, encode, png_header_claiming, shape_image
from serverproc import Client, ServerProcess

TOKENS = {"token-a": ["shapes"], "token-b": ["tiny"]}
ADMIN = "admin-secret"
AUTH = {"token": "token-a"}
MAX_FRAME_BYTES = 1024 * 1024
CIRCLE = shape_image("circle", seed=5)
SQUARE = shape_image("square", seed=5)


@pytest.fixture(scope="module")
def shared(model_store, tmp_path_factory):
    """A server several projects share: tokens on, a small frame limit."""
    workdir = tmp_path_factory.mktemp("hostile")
    proc = ServerProcess(env={"MODEL_STORE": str(model_store), "PROJECT_TOKENS": json.dumps(TOKENS),
                              "ADMIN_TOKEN": ADMIN, "MODEL_CACHE_DIR": str(workdir / "cache"),
                              "MAX_FRAME_BYTES": str(MAX_FRAME_BYTES), "MAX_IMAGE_PIXELS": "20000000",
                              "MAX_FPS_PER_CLIENT": "100"},
                         log_dir=workdir).start()
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def user(shared):
    """One project's connection, reused by every Socket.IO case."""
    with Client(shared.url, auth=AUTH) as client:
        yield client


def top(result) -> str:
    assert "labels" in result, result
    return result["labels"][0]["label"]


def frame(image, **fields):
    return {"model": "shapes", "image": image, **fields}


# ---- images the server must refuse -----------------------------------------


def _bmp_header_claiming(width: int, height: int) -> bytes:
    header = b"BM" + (54).to_bytes(4, "little") + b"\0\0\0\0" + (54).to_bytes(4, "little")
    info = (40).to_bytes(4, "little") + width.to_bytes(4, "little") + height.to_bytes(4, "little")
    info += (1).to_bytes(2, "little") + (24).to_bytes(2, "little") + bytes(24)
    return header + info + bytes(64)


def _gif_header_claiming(width: int, height: int) -> bytes:
    size = width.to_bytes(2, "little") + height.to_bytes(2, "little")
    descriptor = b"," + bytes(4) + size + b"\0"
    return b"GIF89a" + size + b"\0\0\0" + descriptor + b"\x02\x02\x44\x01\0;"


def _other_format(fmt: str) -> bytes:
    return encode(CIRCLE.convert("RGB"), fmt)


def _truncated(fmt: str) -> bytes:
    data = encode(CIRCLE, fmt)
    return data[: len(data) * 2 // 3]


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 0 moveto 64 64 lineto stroke\n%%EOF\n"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><circle r="30" cx="32" cy="32"/></svg>'
#: Bytes whose base64 uses '+' and '/', to check the URL-safe alphabet is refused.
SLASHY = bytes([0xFB, 0xFF, 0xBF]) * 8

REFUSED_IMAGES = {
    "tiff": (_other_format("TIFF"), "bad_image"),
    "tiff in an image/jpeg data url": (data_url(_other_format("TIFF"), "image/jpeg"), "bad_image"),
    "ico": (_other_format("ICO"), "bad_image"),
    "ppm": (_other_format("PPM"), "bad_image"),
    "pcx": (_other_format("PCX"), "bad_image"),
    "tga": (_other_format("TGA"), "bad_image"),
    "pdf": (_other_format("PDF"), "bad_image"),
    "eps (would run ghostscript)": (EPS, "bad_image"),
    "svg": (SVG, "bad_image"),
    "truncated jpeg": (_truncated("JPEG"), "bad_image"),
    "truncated png": (_truncated("PNG"), "bad_image"),
    "truncated gif": (_truncated("GIF"), "bad_image"),
    "png bomb header": (png_header_claiming(60_000, 60_000), "too_large"),
    "bmp bomb header": (_bmp_header_claiming(50_000, 50_000), "too_large"),
    "gif bomb header": (_gif_header_claiming(65_535, 65_535), "too_large"),
    "a file path": ("/etc/passwd", "bad_image"),
    "a file url": ("file:///etc/passwd", "bad_image"),
    "an http url as the image": ("http://127.0.0.1:9/circle.jpg", "bad_image"),
    "a relative path": ("../../models/shapes/model.keras", "bad_image"),
    "url-safe base64": (b64(SLASHY).replace("+", "-").replace("/", "_"), "bad_image"),
    "base64 without padding": (b64(encode(CIRCLE))[:-2].rstrip("="), "bad_image"),
    "base64 with a NUL": (b64(encode(CIRCLE))[:40] + "\0" + b64(encode(CIRCLE))[40:], "bad_image"),
    "non-ascii base64": ("é" * 64, "bad_image"),
    "data url without base64": ("data:image/png," + "x" * 40, "bad_image"),
    "data url of html": ("data:text/html;base64," + b64(b"<script>alert(1)</script>"), "bad_image"),
    "empty bytes": (b"", "bad_image"),
    "over the frame limit": (b"\xff\xd8" + bytes(MAX_FRAME_BYTES), "too_large"),
}


@pytest.mark.parametrize("case", list(REFUSED_IMAGES), ids=list(REFUSED_IMAGES))
def test_refused_images_over_socketio(user, case):
    image, code = REFUSED_IMAGES[case]
    answer = user.call("frame", frame(image, id=case))
    assert answer.get("code") == code, answer
    assert answer["id"] == case and len(answer["message"]) > 10


@pytest.mark.parametrize("case", ["tiff", "eps (would run ghostscript)", "truncated png", "png bomb header",
                                  "gif bomb header", "empty bytes"])
def test_refused_images_over_http(shared, case):
    image, code = REFUSED_IMAGES[case]
    response = requests.post(f"{shared.url}/api/models/shapes/predict", files={"file": ("photo.jpg", image)},
                             headers={"Authorization": "Bearer token-a"}, timeout=30)
    assert response.json()["error"]["code"] == code
    assert response.status_code == {"bad_image": 400, "too_large": 413}[code]


# ---- images the server must accept, converted deterministically -------------


def _animated(fmt: str) -> bytes:
    buffer = io.BytesIO()
    CIRCLE.save(buffer, format=fmt, save_all=True, append_images=[SQUARE, SQUARE], duration=100, loop=0)
    return buffer.getvalue()


def _sixteen_bit_grey() -> bytes:
    grey = np.asarray(CIRCLE.convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")  # mode I;16


def _palette_with_transparency() -> bytes:
    paletted = CIRCLE.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return encode(paletted, "PNG", transparency=0)


ACCEPTED_IMAGES = {
    "animated gif (first frame)": (_animated("GIF"), "circle"),
    "apng (first frame)": (_animated("PNG"), "circle"),
    "cmyk jpeg": (encode(CIRCLE.convert("CMYK"), "JPEG", quality=95), "circle"),
    "16-bit grey png": (_sixteen_bit_grey(), None),
    "palette png with transparency": (_palette_with_transparency(), "circle"),
    "rgba png": (encode(CIRCLE.convert("RGBA"), "PNG"), "circle"),
    "webp": (encode(CIRCLE, "WEBP", lossless=True), "circle"),
    "bmp": (encode(CIRCLE, "BMP"), "circle"),
    "jpeg in an image/png data url": (data_url(encode(CIRCLE), "image/png"), "circle"),
}


@pytest.mark.parametrize("case", list(ACCEPTED_IMAGES), ids=list(ACCEPTED_IMAGES))
def test_unusual_but_valid_images_are_labelled_the_same_every_time(user, case):
    image, expected = ACCEPTED_IMAGES[case]
    first, second = user.call("frame", frame(image, top_k=3)), user.call("frame", frame(image, top_k=3))
    if expected:
        assert top(first) == expected
    assert first["labels"] == second["labels"]  # deterministic conversion


def test_an_upload_is_judged_by_its_bytes_not_its_name(shared):
    auth = {"Authorization": "Bearer token-a"}
    url = f"{shared.url}/api/models/shapes/predict"
    jpeg_named_tiff = requests.post(url, files={"file": ("circle.tiff", encode(CIRCLE))}, headers=auth, timeout=30)
    assert jpeg_named_tiff.status_code == 200 and top(jpeg_named_tiff.json()) == "circle"
    tiff_named_jpeg = requests.post(url, files={"file": ("circle.jpg", _other_format("TIFF"))}, headers=auth,
                                    timeout=30)
    assert tiff_named_jpeg.status_code == 400 and tiff_named_jpeg.json()["error"]["code"] == "bad_image"


# ---- frame payloads of the wrong shape --------------------------------------


def _nested(depth: int):
    value: object = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


BAD_PAYLOADS = {
    "a list": ([1, 2, 3], "bad_request"),
    "a number": (42, "bad_request"),
    "null": (None, "bad_request"),
    "image is a list of ints": (frame(list(range(100))), "bad_request"),
    "image is an object": (frame({"data": "abc"}), "bad_request"),
    "image deeply nested": (frame(_nested(200)), "bad_request"),
    "model is a list": ({"model": ["shapes"], "image": b"x"}, "bad_request"),
    "model name of 10k characters": ({"model": "m" * 10_000, "image": b"x"}, "unknown_model"),
    "model with a NUL": ({"model": "shapes\0", "image": b"x"}, "unknown_model"),
    "model path traversal": ({"model": "../../etc/passwd", "image": b"x"}, "unknown_model"),
    "top_k huge": (frame(b"x", top_k=10**12), "bad_request"),
    "top_k negative": (frame(b"x", top_k=-1), "bad_request"),
    "top_k a float": (frame(b"x", top_k=2.5), "bad_request"),
    "top_k true": (frame(b"x", top_k=True), "bad_request"),
    "id too long": (frame(b"x", id="i" * 1000), "bad_request"),
    "id a list": (frame(b"x", id=[1]), "bad_request"),
}


@pytest.mark.parametrize("case", list(BAD_PAYLOADS), ids=list(BAD_PAYLOADS))
def test_payloads_of_the_wrong_shape(user, case):
    payload, code = BAD_PAYLOADS[case]
    answer = user.call("frame", payload)
    assert answer.get("code") == code, answer


# ---- access ------------------------------------------------------------------


def test_access_is_enforced_on_both_transports(shared, user):
    for auth in (None, {"token": "wrong"}, {"token": "token-a "}, {"token": ["token-a"]}, "token-a"):
        refused = socketio.Client(reconnection=False)
        reasons = []
        refused.on("connect_error", reasons.append)
        with pytest.raises(socketio.exceptions.ConnectionError):
            refused.connect(shared.url, transports=["websocket"], auth=auth, wait_timeout=10)
        assert reasons[0]["message"] == "unauthorized", auth
    jpeg = encode(CIRCLE)
    assert user.call("frame", {"model": "tiny", "image": jpeg})["code"] == "unauthorized"
    assert user.call("monitor")["code"] == "unauthorized"
    assert [m["name"] for m in user.call("models")["models"]] == ["shapes"]
    predict = f"{shared.url}/api/models/tiny/predict"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dG9rZW4tYQ=="},
                    {"Authorization": "Bearer token-a"}):
        response = requests.post(predict, files={"file": ("a.jpg", jpeg)}, headers=headers, timeout=30)
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized", headers
    for page in ("/metrics", "/dashboard", "/api/status"):
        refused = requests.get(shared.url + page, headers={"Authorization": "Bearer token-a"}, timeout=10)
        assert refused.status_code == 401 and "unauthorized" in refused.text, page
    metrics = requests.get(shared.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert metrics.status_code == 200 and "webapp_frames_total" in metrics.text


# ---- limits ------------------------------------------------------------------


def test_an_event_with_more_binaries_than_a_frame_carries_is_refused(user):
    image = encode(CIRCLE)
    answer = user.call("frame", frame(image, extra=[b"1" * 1000, b"2" * 1000, b"3"]))
    assert answer["code"] == "bad_request" and "attachment" in answer["message"]
    user.emit("frame", frame(image, id="many", extra=[b"x"] * 20))
    error = user.next("error")
    assert error["code"] == "bad_request" and "declared 21" in error["message"] and error["id"] == "many"
    assert top(user.call("frame", frame(image))) == "circle"


class RawSocketIO:
    """Engine.IO v4 spoken by hand over a websocket, to send what no client library would."""

    def __init__(self, url: str, token: str):
        self.ws = websocket.create_connection(url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket",
                                              timeout=20)
        assert self.ws.recv().startswith("0")  # Engine.IO open
        self.ws.send("40" + json.dumps({"token": token}))
        assert self.recv_text().startswith("40")

    def recv_text(self) -> str:
        while True:
            message = self.ws.recv()
            if message == "2":  # ping
                self.ws.send("3")
                continue
            return message

    def send(self, message) -> None:
        if isinstance(message, bytes):
            self.ws.send_binary(message)
        else:
            self.ws.send(message)

    def call_frame(self, ack_id: int, image: bytes) -> dict:
        self.send(f"42{ack_id}" + json.dumps(["frame", frame("data:image/jpeg;base64," + b64(image))]))
        while True:
            message = self.recv_text()
            if message.startswith(f"43{ack_id}"):
                return json.loads(message[len(f"43{ack_id}"):])[0]


def test_declared_attachments_are_never_held_in_memory(shared):
    raw = RawSocketIO(shared.url, "token-a")
    try:
        header = {"model": "shapes", "image": {"_placeholder": True, "num": 0}}
        raw.send("4" + "551-7" + json.dumps(["frame", header]))  # message: binary event, 51 attachments, ack 7
        for _ in range(51):
            raw.send(b"\0" * 100_000)
        answer = json.loads(raw.recv_text()[len("437"):])[0]
        assert answer["code"] == "bad_request" and "declared 51" in answer["message"]
        assert top(raw.call_frame(8, encode(CIRCLE))) == "circle"
    finally:
        raw.ws.close()


#: Engine.IO messages (type 4) carrying malformed Socket.IO packets, and
#: Engine.IO packets of an unknown type (9), which are ignored.
GARBAGE_PACKETS = ["9999", "4", "4garbage", "42", "42[", '42["frame"', "42{}", '42["no-such-event", 1]', "49",
                   "4-1-[]", '45x-["frame"]', "4" + "9" * 30 + '["frame"]', "6", "5",
                   "42" + "[" * 5000 + "]" * 5000, '42["frame",' + '{"a":' * 5000 + "1" + "}" * 5000 + "]"]


def test_malformed_socketio_packets_leave_the_connection_working(shared):
    raw = RawSocketIO(shared.url, "token-a")
    try:
        for packet in GARBAGE_PACKETS:
            raw.send(packet)
        raw.send(b"\x00\x01 a stray binary")
        assert top(raw.call_frame(1, encode(CIRCLE))) == "circle"
    finally:
        raw.ws.close()
    # Logged as one line each, not as tracebacks a flood could fill the disk with.
    assert "dropped a malformed Socket.IO packet" in shared.log()
    assert "Traceback" not in shared.log()


@pytest.mark.parametrize("message", ["x", ""], ids=["not a type", "empty"])
def test_a_broken_transport_frame_closes_only_that_connection(shared, user, message):
    """Below Socket.IO, an Engine.IO message of no known type cannot be answered:
    that one connection is closed; everyone else is unaffected."""
    raw = RawSocketIO(shared.url, "token-a")
    raw.send(message)
    with pytest.raises((websocket.WebSocketException, ConnectionError, OSError)):
        for _ in range(10):
            raw.call_frame(1, encode(CIRCLE))
    assert top(user.call("frame", frame(encode(CIRCLE)))) == "circle"


def test_a_flood_from_one_client_is_rate_limited(shared):
    with Client(shared.url, auth=AUTH) as flooder:
        image = encode(shape_image("circle", size=(64, 64)))
        for index in range(400):
            flooder.emit("frame", frame(image, id=index))
        codes = []
        deadline = time.monotonic() + 30
        while len(codes) < 400 and time.monotonic() < deadline:
            for event in ("label", "error"):
                codes += ["label" if event == "label" else item["code"] for item in flooder.drain(event)]
            time.sleep(0.05)
        assert len(codes) == 400  # every frame answered
        assert "rate_limited" in codes and "label" in codes
        assert set(codes) <= {"label", "rate_limited", "superseded"}


def test_http_bodies_over_the_limit_are_refused_before_they_are_read(shared):
    host, port = shared.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as conn:
        conn.sendall(b"POST /api/models/shapes/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer token-a\r\n"
                     b"Content-Type: image/jpeg\r\nContent-Length: 1000000000\r\n\r\n" + b"\xff" * 1000)
        reply = conn.recv(4096).decode("latin-1")  # answered without the other 999 MB
    assert reply.startswith("HTTP/1.1 413") and "too_large" in reply

    def chunks():
        for _ in range(40):
            yield b"\xff" * 65536

    chunked = requests.post(f"{shared.url}/api/models/shapes/predict", data=chunks(),
                            headers={"Authorization": "Bearer token-a", "Content-Type": "image/jpeg"}, timeout=30)
    assert chunked.status_code == 413 and chunked.json()["error"]["code"] == "too_large"


HTTP_CASES = [
    ({"json": {"image": "file:///etc/passwd"}}, 400, "bad_image"),
    ({"json": {"url": "http://2130706433:9/a.jpg"}}, 400, "bad_request"),
    ({"json": {"url": "http://0x7f.1:9/a.jpg"}}, 400, "bad_request"),
    ({"json": {"url": "http://[::1]:9/a.jpg"}}, 400, "bad_request"),
    ({"json": {"url": "http://localhost:9/a.jpg"}}, 400, "bad_request"),
    ({"json": {"url": "gopher://127.0.0.1:9/"}}, 400, "bad_request"),
    ({"json": {"url": "file:///etc/passwd"}}, 400, "bad_request"),
    ({"json": {"url": ["http://example.com/"]}}, 400, "bad_request"),
    ({"data": "{not json", "headers": {"Content-Type": "application/json"}}, 400, "bad_request"),
    ({"json": {"image": b64(encode(CIRCLE)), "top_k": "all"}}, 400, "bad_request"),
    ({"data": b"<svg/>", "headers": {"Content-Type": "image/svg+xml"}}, 400, "bad_image"),
]


@pytest.mark.parametrize("kwargs,status,code", HTTP_CASES, ids=[str(c[0])[:60] for c in HTTP_CASES])
def test_hostile_http_requests(shared, kwargs, status, code):
    headers = {"Authorization": "Bearer token-a", **kwargs.pop("headers", {})}
    response = requests.post(f"{shared.url}/api/models/shapes/predict", headers=headers, timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_model_names_in_urls_cannot_escape_the_store(shared):
    headers = {"Authorization": f"Bearer {ADMIN}"}
    for name in ("..%2f..%2fetc%2fpasswd", "%2e%2e", "shapes%00", "a" * 500):
        response = requests.get(f"{shared.url}/api/models/{name}", headers=headers, timeout=10)
        # `..%2f..` decodes to a path no route has (not_found); the rest name no model.
        assert response.status_code == 404, name
        assert response.json()["error"]["code"] == ("not_found" if "%2f" in name else "unknown_model"), name


# ---- after all of it ---------------------------------------------------------


def test_after_all_of_it_the_server_still_serves(shared, user):
    assert shared.proc.poll() is None
    assert user.connected and top(user.call("frame", frame(encode(CIRCLE)))) == "circle"
    with Client(shared.url, auth=AUTH) as fresh:
        assert top(fresh.call("frame", frame(base64.b64encode(encode(SQUARE)).decode()))) == "square"
    response = requests.post(f"{shared.url}/api/models/shapes/predict", files={"file": ("c.jpg", encode(CIRCLE))},
                             headers={"Authorization": "Bearer token-a"}, timeout=30)
    assert response.status_code == 200 and top(response.json()) == "circle"
    assert "token-a" not in shared.log() and ADMIN not in shared.log()  # tokens are never logged
