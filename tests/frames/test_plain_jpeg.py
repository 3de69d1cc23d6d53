"""Plain JPEG frames decoded by libjpeg-turbo directly give Pillow's pixels exactly.

`frames/plain_jpeg.py` is a shortcut for speed: every case here compares its
model input with the documented Pillow pipeline (`open_image` + `to_pixels`)
on the same bytes, and checks the shortcut was really taken (else the
comparison proves nothing), or really not taken where it must not be.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from images import encode, noise_image, shape_image
from webapp.errors import BadImage, TooLarge
from webapp.frames.images import decode_cost, model_input, normalise, open_image, probe_image, to_pixels
from webapp.frames.plain_jpeg import PlainJpeg
from webapp.models.modelspec import ModelMetadata, ModelSpec

pytestmark = pytest.mark.quick

LIMIT = 50_000_000


def spec(height, width, channels=3, preprocess="symmetric"):
    return ModelSpec.build("m", "v", (height, width, channels), 2,
                           ModelMetadata(labels=("a", "b"), preprocess=preprocess))


def target(model):
    return (model.height, model.width, model.channels)


def through_pillow(data: bytes, model) -> np.ndarray:
    """The documented pipeline, Pillow all the way."""
    return normalise(to_pixels(open_image(data, LIMIT, target(model)), model), model.preprocess)


def jpeg(width, height, mode="RGB", **params) -> bytes:
    picture = shape_image("star", seed=width, size=(width, height)).convert(mode)
    saved = ImageFile.MAXBLOCK
    ImageFile.MAXBLOCK = max(saved, width * height * 4)  # progressive saves need the room
    try:
        return encode(picture, quality=85, **params)
    finally:
        ImageFile.MAXBLOCK = saved


@pytest.mark.parametrize("size", [(224, 224), (640, 480), (480, 640), (200, 150), (63, 65), (9, 17), (1, 1),
                                  (3000, 2000)])
@pytest.mark.parametrize("params", [{"subsampling": 2}, {"subsampling": 0}, {"subsampling": 1},
                                    {"progressive": True}], ids=["420", "444", "422", "progressive"])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_plain_jpegs_give_pillows_pixels_exactly(size, params, mode):
    data = jpeg(*size, mode=mode, **params)
    models = [spec(64, 64), spec(224, 224), spec(24, 40), spec(8, 8)]
    if mode == "L":
        models.append(spec(32, 48, 1))
    for model in models:
        probed = probe_image(data, LIMIT, target(model))
        assert isinstance(probed, PlainJpeg), "the shortcut was not taken"
        assert np.array_equal(model_input(probed, model), through_pillow(data, model)), (size, params, mode, model)


def test_frames_the_shortcut_cannot_reproduce_go_through_pillow():
    tall = Image.new("RGB", (20, 40), (0, 0, 255))
    tall.paste((255, 0, 0), (0, 0, 20, 20))  # red top half
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees: only Pillow reads orientation
    rotated = encode(tall, exif=exif, quality=95)
    colour_for_grey_model = jpeg(64, 48)  # luma by Pillow's formula
    png = encode(noise_image(64, 48), "PNG")
    for data, model in ((rotated, spec(40, 20)), (colour_for_grey_model, spec(16, 16, 1)), (png, spec(16, 16))):
        probed = probe_image(data, LIMIT, target(model))
        assert not isinstance(probed, PlainJpeg)
        assert np.array_equal(model_input(probed, model), through_pillow(data, model))
    upright = model_input(probe_image(rotated, LIMIT, (40, 20, 3)), spec(40, 20, preprocess="raw"))
    assert upright[-5, 10, 0] > 200 and upright[-5, 10, 2] < 60  # red is at the bottom


def _damaged(data: bytes, damage: str) -> bytes:
    if damage == "truncated":
        return data[: len(data) // 2]
    if damage == "early end":  # an end-of-image marker inside the pixels
        return data[:-400] + b"\xff\xd9" + data[-398:]
    scan = data.index(b"\xff\xda")  # "bad scan": a start-of-scan naming no component
    return data[:scan + 5] + b"\x09" + data[scan + 6:]


@pytest.mark.parametrize("damage", ["truncated", "early end", "bad scan"])
def test_a_damaged_plain_jpeg_gets_the_answer_pillow_gives_it(damage):
    """Refused with the same message, or (where libjpeg only warns and Pillow
    decodes it) the same pixels: the shortcut hands such frames to Pillow."""
    broken = _damaged(jpeg(320, 240), damage)
    model = spec(64, 64)
    probed = probe_image(broken, LIMIT, target(model))
    assert isinstance(probed, PlainJpeg)  # the header is fine; the pixels are not

    def outcome(decode):
        try:
            return decode().tobytes()
        except BadImage as exc:
            return exc.message

    shortcut = outcome(lambda: model_input(probed, model))
    assert shortcut == outcome(lambda: through_pillow(broken, model))
    if damage == "truncated":
        assert "truncated" in shortcut


def test_the_pixel_limit_is_checked_from_the_header_before_decoding():
    data = bytearray(jpeg(64, 48))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = (30000).to_bytes(2, "big") + (30000).to_bytes(2, "big")  # claims 30000x30000
    with pytest.raises(TooLarge):
        probe_image(bytes(data), LIMIT, (64, 64, 3))


@pytest.mark.parametrize("progressive", [False, True])
def test_the_decode_memory_estimate_is_never_below_pillows(progressive):
    """The decode budget admits frames by this estimate: the shortcut must not
    let in more than the Pillow path would."""
    data = jpeg(1920, 1080, progressive=progressive)
    for model in (spec(64, 64), spec(224, 224)):
        plain = probe_image(data, LIMIT, target(model))
        pillow = Image.open(io.BytesIO(data))
        pillow.draft("RGB", (plain.width, plain.height))
        pillow.info["webapp_encoded_size"] = (1920, 1080)
        assert isinstance(plain, PlainJpeg) and (plain.width, plain.height) == pillow.size
        assert decode_cost(plain, (model.height, model.width)) >= decode_cost(pillow, (model.height, model.width))
