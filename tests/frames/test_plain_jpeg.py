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
from webapp.frames.plain_jpeg import PlainJpeg, frame_header
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


@pytest.mark.parametrize("size", [(224, 224), (640, 480), (480, 640), (200, 150), (63, 65), (16, 17), (17, 16),
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


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 3), (5, 5), (7, 9), (15, 15), (17, 3), (16, 16), (19, 23)])
def test_tiny_plain_jpegs_give_pillows_pixels_whichever_path_decodes_them(size):
    """For a few pixels, libjpeg-turbo could reach Pillow's decoded size at a
    smaller DCT scale than Pillow's, and the bundled versions decode a partial
    block differently: such frames go through Pillow."""
    for mode in ("RGB", "L"):
        data = jpeg(*size, mode=mode)
        for model in (spec(1, 1), spec(2, 3), spec(8, 8), spec(5, 5)) + ((spec(1, 1, 1),) if mode == "L" else ()):
            probed = probe_image(data, LIMIT, target(model))
            assert np.array_equal(model_input(probed, model), through_pillow(data, model)), (size, mode, model)


def _with_segment_after_the_frame_header(data: bytes, segment: bytes) -> bytes:
    sof = data.index(b"\xff\xc0")
    end = sof + 2 + int.from_bytes(data[sof + 2:sof + 4], "big")
    return data[:end] + segment + data[end:]


def test_frames_the_shortcut_cannot_reproduce_go_through_pillow():
    tall = Image.new("RGB", (20, 40), (0, 0, 255))
    tall.paste((255, 0, 0), (0, 0, 20, 20))  # red top half
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees: only Pillow reads orientation
    rotated = encode(tall, exif=exif, quality=95)
    colour_for_grey_model = jpeg(64, 48)  # luma by Pillow's formula
    png = encode(noise_image(64, 48), "PNG")
    # EXIF anywhere before the first scan, even after the frame header
    exif_segment = b"\xff\xe1" + (len(exif.tobytes()) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + exif.tobytes()
    late_exif = _with_segment_after_the_frame_header(encode(tall, quality=95), exif_segment)
    picture = shape_image("circle", size=(160, 120))
    mpo = io.BytesIO()  # a multi-picture file: Pillow opens it as MPO, without draft mode
    picture.save(mpo, "MPO", save_all=True, append_images=[picture.rotate(90)])
    icc = encode(picture, quality=90, icc_profile=b"\0" * 200)
    cases = ((rotated, spec(40, 20)), (late_exif, spec(40, 20)), (colour_for_grey_model, spec(16, 16, 1)),
             (png, spec(16, 16)), (mpo.getvalue(), spec(32, 32)), (icc, spec(32, 32)))
    for data, model in cases:
        probed = probe_image(data, LIMIT, target(model))
        assert not isinstance(probed, PlainJpeg)
        assert np.array_equal(model_input(probed, model), through_pillow(data, model))
    for data in (rotated, late_exif):
        upright = model_input(probe_image(data, LIMIT, (40, 20, 3)), spec(40, 20, preprocess="raw"))
        assert upright[-5, 10, 0] > 200 and upright[-5, 10, 2] < 60  # red is at the bottom


def _damaged(data: bytes, damage: str) -> bytes:
    if damage == "truncated":
        return data[: len(data) // 2]
    if damage == "early end":  # an end-of-image marker inside the pixels
        return data[:-400] + b"\xff\xd9" + data[-398:]
    scan = data.index(b"\xff\xda")  # "bad scan": a start-of-scan naming no component
    return data[:scan + 5] + b"\x09" + data[scan + 6:]


@pytest.mark.parametrize("damage", ["stray marker", "short JFIF segment"])
def test_headers_pillow_refuses_are_left_to_pillow(damage):
    data = jpeg(160, 120)
    if damage == "stray marker":  # a marker with no length field, which Pillow refuses in a header
        broken = data[:2] + b"\xff\x01" + data[2:]
    else:
        app0 = data.index(b"\xff\xe0")
        broken = data[:app0] + b"\xff\xe0\x00\x07JFIF\x00" + data[app0 + 18:]
    model = spec(32, 32)
    assert frame_header(broken) is None  # not taken for a plain JPEG
    with pytest.raises(BadImage):  # Pillow refuses it, header or pixels
        model_input(probe_image(broken, LIMIT, target(model)), model)


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


PEAK = """
import sys
from webapp.frames.images import decode_cost, model_input, prepare, probe_image
from webapp.frames.plain_jpeg import PlainJpeg
from webapp.models.modelspec import ModelMetadata, ModelSpec

def kb(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0])

path, side = sys.argv[1], int(sys.argv[2])
model = ModelSpec.build("m", "v", (side, side, 3), 2, ModelMetadata(labels=("a", "b"), preprocess="raw"))
data = open(path, "rb").read()
prepare(open(sys.argv[3], "rb").read(), model, 10**9)  # imports and first-use allocations, not counted
probed = probe_image(data, 10**9, (side, side, 3))
assert isinstance(probed, PlainJpeg)
estimate = decode_cost(probed, (side, side))
open("/proc/self/clear_refs", "w").write("5")  # restart the peak (VmHWM) from here
before = kb("VmRSS")
model_input(probed, model)
print(estimate, (kb("VmHWM") - before) * 1024)
"""


@pytest.mark.parametrize("size, mode, progressive, side", [
    ((6000, 6000), "L", False, 32),  # grey for a colour model
    ((4000, 3000), "RGB", False, 64),
    ((3000, 2000), "RGB", True, 224),
    ((1920, 1080), "L", True, 224),
])
def test_the_decode_memory_estimate_covers_the_real_peak(tmp_path, size, mode, progressive, side):
    """The decode budget admits frames by this estimate (`DECODE_MEMORY_MB`):
    the memory a plain JPEG's decoding really takes, measured as the peak RSS
    of a process that decodes it, never exceeds it."""
    import subprocess
    import sys

    big, small = tmp_path / "big.jpg", tmp_path / "small.jpg"
    big.write_bytes(jpeg(*size, mode=mode, progressive=progressive))
    small.write_bytes(jpeg(320, 240, mode=mode))
    done = subprocess.run([sys.executable, "-c", PEAK, str(big), str(side), str(small)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    estimate, peak = map(int, done.stdout.split())
    assert 0 < peak <= estimate, (peak, estimate)
