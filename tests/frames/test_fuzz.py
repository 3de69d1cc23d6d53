"""Property-based fuzzing (Hypothesis) of image decoding and frame payloads.

The property everywhere: whatever comes in, the answer is a result or one of
the documented errors. Never another exception, never a hang, and over the
wire always a `label` or an `error`, on a connection that stays open.
Runs are derandomized (see conftest), so CI sees the same inputs every time.
"""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from images import encode, noise_image, shape_image
from webapp.frames.service import FrameRequest
from webapp.errors import ERROR_CODES, ServingError
from webapp.frames.images import payload_bytes, prepare
from webapp.models.modelspec import ModelSpec

MAX_BYTES = 256 * 1024
SPECS = [ModelSpec("m", "1", 32, 32, 3, ("a", "b", "c"), "raw", "probabilities"),
         ModelSpec("g", "1", 20, 30, 1, ("a", "b", "c"), "symmetric", "probabilities")]

#: Valid images of every accepted format and a few modes: the seeds that
#: mutations start from, so the fuzzer reaches deep into each decoder.
SEEDS = [encode(noise_image(40, 30, seed=1), "JPEG"), encode(noise_image(40, 30, seed=2, mode="RGBA"), "PNG"),
         encode(noise_image(24, 24, seed=3, mode="L"), "PNG"), encode(noise_image(30, 20, seed=4), "GIF"),
         encode(noise_image(30, 20, seed=5), "BMP"), encode(noise_image(30, 20, seed=6), "WEBP"),
         # Plain JPEGs decoded without Pillow (frames/plain_jpeg.py): grey, and progressive.
         encode(noise_image(40, 30, seed=7, mode="L"), "JPEG"),
         encode(noise_image(40, 30, seed=8), "JPEG", progressive=True)]


@st.composite
def mutated_images(draw) -> bytes:
    """A valid image with some bytes flipped, cut short, or spliced."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        data += draw(st.binary(max_size=64))
    return bytes(data)


image_bytes = st.one_of(st.binary(max_size=2048), mutated_images())


def check_decoding(data: bytes, spec: ModelSpec) -> None:
    try:
        tensor = prepare(payload_bytes(data, MAX_BYTES), spec, max_pixels=2_000_000)
    except ServingError as exc:
        assert exc.code in ERROR_CODES
        return
    assert tensor.dtype == np.float32 and tensor.shape == (spec.height, spec.width, spec.channels)
    assert np.isfinite(tensor).all()


@settings(max_examples=600, deadline=None)
@given(data=image_bytes, spec=st.sampled_from(SPECS))
def test_decoding_any_bytes_gives_a_tensor_or_a_documented_error(data, spec):
    check_decoding(data, spec)


@settings(max_examples=300, deadline=None)
@given(data=image_bytes, as_data_url=st.booleans(), mime=st.sampled_from(["image/png", "image/jpeg", "text/html"]))
def test_decoding_any_text_gives_a_tensor_or_a_documented_error(data, as_data_url, mime):
    text = base64.b64encode(data).decode()
    text = f"data:{mime};base64,{text}" if as_data_url else text
    try:
        tensor = prepare(payload_bytes(text, MAX_BYTES), SPECS[0], max_pixels=2_000_000)
    except ServingError as exc:
        assert exc.code in ERROR_CODES
        return
    assert tensor.shape == (32, 32, 3)


#: A file the fuzzer names in every form a decoder could open: if any string
#: were read as a path or fetched as a URL, its bytes would come back.
SECRET = b"GIF89a secret file contents that no base64 string in these tests decodes to"


@pytest.fixture(scope="module")
def secret_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("secret") / "secret.gif"
    path.write_bytes(SECRET)
    return path


def path_and_url_texts(secret):
    named = [str(secret), f"file://{secret}", f"file:{secret}", f"{secret}\n", "/etc/passwd",
             "file:///etc/passwd", "http://127.0.0.1:1/pic.jpg", f"data:image/gif;base64,{secret}"]
    prefixes = ["/", "./", "../", "~/", "file://", "http://", "https://", "data:image/png;base64,"]
    return st.one_of(st.text(max_size=300), st.sampled_from(named),
                     st.builds(str.__add__, st.sampled_from(prefixes), st.text(max_size=60)))


def test_arbitrary_strings_are_never_opened_as_paths_or_urls(secret_file):
    """A string is only ever base64 (bare or in a data URL): what it yields is
    exactly its base64 decoding, else it is `bad_image`, never a file's bytes."""

    @settings(max_examples=400, deadline=None)
    @given(text=path_and_url_texts(secret_file))
    def check(text):
        try:
            data = payload_bytes(text, MAX_BYTES)
        except ServingError as exc:
            assert exc.code == "bad_image", (text, exc.code)
            return
        body = text.split(",", 1)[1] if text[:5].lower() == "data:" else text
        assert data == base64.b64decode(re.sub(r"\s+", "", body), validate=True), text
        assert SECRET not in data

    check()
    for text in (str(secret_file), f"file://{secret_file}", "/etc/passwd", "file:///etc/passwd"):
        with pytest.raises(ServingError) as refused:
            payload_bytes(text, MAX_BYTES)
        assert refused.value.code == "bad_image", text


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

GOOD_JPEG = encode(shape_image("circle", size=(64, 64)))
frame_fields = {
    "model": st.one_of(st.sampled_from(["shapes", "tiny", "nope", "", "../shapes"]), json_values),
    "image": st.one_of(st.just(GOOD_JPEG), st.just(base64.b64encode(GOOD_JPEG).decode()), image_bytes,
                       st.text(max_size=50), json_values),
    "id": json_values,
    "top_k": st.one_of(st.integers(-5, 200), json_values),
}

frame_payloads = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional=frame_fields),
    st.fixed_dictionaries({"model": st.just("shapes"), "image": frame_fields["image"]},
                          optional={"id": frame_fields["id"], "top_k": frame_fields["top_k"]}),
)


@settings(max_examples=600, deadline=None)
@given(payload=frame_payloads)
def test_parsing_any_payload_gives_a_frame_or_a_documented_error(payload):
    try:
        frame = FrameRequest.parse(payload)
    except ServingError as exc:
        assert exc.code in ERROR_CODES
        return
    assert isinstance(frame.model, str) and frame.image is not None and 1 <= frame.top_k <= 100


def test_every_payload_over_the_wire_gets_a_label_or_an_error(server):
    """The same payloads sent to the real server: every one answered, the
    connection never dropped, and a good frame still labelled at the end."""
    answered = []
    with server.client() as client:

        @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(payload=frame_payloads)
        def send(payload):
            answer = client.call("frame", payload, timeout=30)
            assert isinstance(answer, dict), answer
            assert "labels" in answer or answer.get("code") in (*ERROR_CODES, "internal"), answer
            assert answer.get("code") != "internal", answer
            answered.append(answer)
            assert client.connected

        send()
        final = client.call("frame", {"model": "shapes", "image": GOOD_JPEG})
        assert final["labels"][0]["label"] == "circle"
    assert len(answered) >= 100
    assert any("labels" in a for a in answered) and any("code" in a for a in answered)
