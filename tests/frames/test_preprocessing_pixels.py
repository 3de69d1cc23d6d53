"""What the model sees, read back through the real server.

The test model here is a `Flatten` and nothing else: its 90 "scores" are the
5x6x3 pixels the server fed it (preprocess `raw`: 0-255), so every answer is a
readout of the server's preprocessing, over the wire, with no access to its
code. The expected pixels are computed here with plain Pillow, the long way.

* `Image.reduce` pre-shrinking: an image whose crop is over 4x the input is
  box-averaged first, with alpha premultiplied, "so compositing stays exact".
  The reference composites onto white at full size and resizes from full size;
  the images hide a garish colour under fully transparent pixels, which any
  averaging of straight (not premultiplied) alpha bleeds into the result.
* Animated GIF, WebP and PNG: only the first frame is used.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import ASYNC_MODES
from images import documented_crop_resize, encode
from serverproc import ServerProcess

HEIGHT, WIDTH = 5, 6
#: Full-size BILINEAR and reduce-then-BILINEAR weigh pixels slightly differently
#: (a few levels at most on these images); straight-alpha averaging is off by
#: tens of levels (measured: 41-49 at worst, 19-35 on average).
MAX_LEVELS, MEAN_LEVELS = 4, 1.0


@pytest.fixture(scope="module")
def pixel_store(tmp_path_factory):
    import modelfactory as mf

    keras = mf._keras()
    inputs = keras.Input((HEIGHT, WIDTH, 3))
    model = keras.Model(inputs, keras.layers.Flatten()(inputs))
    root = tmp_path_factory.mktemp("pixel-store")
    mf.save_directory_model(root, "pixels", model)  # no labels: class_0 ... class_89
    return root


@pytest.fixture(scope="module", params=ASYNC_MODES)
def server(request, pixel_store, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"pixels-{request.param}")
    with ServerProcess(async_mode=request.param, log_dir=workdir,
                       env={"MODEL_STORE": str(pixel_store), "DEFAULT_MODEL": "pixels",
                            "MODEL_CACHE_DIR": str(workdir / "cache")}) as proc:
        proc.start()
        proc.wait_ready()
        yield proc


def seen_by_the_model(server, data: bytes) -> np.ndarray:
    with server.client() as client:
        answer = client.call("frame", {"model": "pixels", "image": data, "top_k": 100})
    assert "labels" in answer, answer
    scores = {item["label"]: item["score"] for item in answer["labels"]}
    assert len(scores) == HEIGHT * WIDTH * 3
    return np.array([scores[f"class_{i}"] for i in range(HEIGHT * WIDTH * 3)]).reshape(HEIGHT, WIDTH, 3)


def full_size_reference(data: bytes) -> np.ndarray:
    """The documented steps at full size: composite onto white, centre crop, BILINEAR."""
    image = Image.open(io.BytesIO(data))
    image.load()
    rgba = image.convert("RGBA")
    rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return np.asarray(documented_crop_resize(rgb, HEIGHT, WIDTH), dtype=np.float64)


# 600x500: the whole image is the crop (the model's 6:5), 100x the input, so the
# server shrinks it by 50 first. (With a crop offset that is not a multiple of
# the reduction factor, the crop is taken on the reduced grid and shifts by up
# to a fraction of an input pixel: geometry, not compositing, so kept out of this test.)
Y, X = np.mgrid[0:500, 0:600]


def rgba_with_hidden_red() -> bytes:
    """Gradients, partial alpha, and every other column fully transparent red."""
    alpha = np.where(X % 2 == 0, 0, np.maximum((X + Y) * 255 // 1100, 60)).astype(np.uint8)
    rgb = np.stack([X * 255 // 600, Y * 255 // 500, np.full_like(X, 200)], -1).astype(np.uint8)
    rgb[alpha == 0] = (255, 0, 0)
    return encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG")


def palette_with_a_transparent_red_index() -> bytes:
    """A palette image whose transparent index is red, on every other pixel."""
    index = ((X // 40 + Y // 40) % 3 + 1).astype(np.uint8)
    index[(X + Y) % 2 == 0] = 0
    image = Image.fromarray(index, "P")
    image.putpalette([255, 0, 0, 20, 40, 230, 30, 200, 60, 240, 240, 20] + [0] * (252 * 3))
    return encode(image, "PNG", transparency=0)


def grey_alpha_with_hidden_black() -> bytes:
    """Grey + alpha (LA): every other row fully transparent black."""
    alpha = np.where(Y % 2 == 0, 0, 200).astype(np.uint8)
    grey = (X * 255 // 600).astype(np.uint8)
    grey[alpha == 0] = 0
    return encode(Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG")


@pytest.mark.parametrize("make", [rgba_with_hidden_red, palette_with_a_transparent_red_index,
                                  grey_alpha_with_hidden_black], ids=["RGBA", "P-transparency", "LA"])
def test_pre_shrinking_keeps_compositing_exact(server, make):
    data = make()
    assert Image.open(io.BytesIO(data)).mode in ("RGBA", "P", "LA")
    seen, expected = seen_by_the_model(server, data), full_size_reference(data)
    difference = np.abs(seen - expected)
    assert difference.max() <= MAX_LEVELS and difference.mean() <= MEAN_LEVELS, (seen, expected)


FIRST, SECOND, THIRD = (200, 30, 40), (20, 60, 220), (30, 190, 70)


def animation(fmt: str) -> bytes:
    frames = [Image.new("RGB", (120, 100), colour) for colour in (FIRST, SECOND, THIRD)]
    params = {"GIF": {}, "WEBP": {"lossless": True}, "PNG": {}}[fmt]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **params)
    opened = Image.open(io.BytesIO(data))
    assert getattr(opened, "n_frames", 1) == 3  # really animated
    return data


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_images_use_only_the_first_frame(server, fmt):
    seen = seen_by_the_model(server, animation(fmt))
    assert np.abs(seen - np.array(FIRST)).max() <= 2, seen  # GIF's palette may round a level or so


# -- colour modes: palette, CMYK, grey and 16-bit grey become RGB ------------------------
# 10x9: under 2x the input, so neither DCT scaling nor pre-shrinking applies and the
# reference is plain Pillow: convert, centre crop (10x8), BILINEAR to 6x5.

NOISE = np.random.default_rng(5)


def small_reference(rgb: Image.Image) -> np.ndarray:
    return np.asarray(rgb.crop((0, 0, 10, 8)).resize((WIDTH, HEIGHT), Image.BILINEAR), dtype=np.float64)


def grey() -> tuple[bytes, Image.Image]:
    image = Image.fromarray(NOISE.integers(0, 256, (9, 10), dtype=np.uint8), "L")
    return encode(image, "PNG"), image.convert("RGB")


def palette() -> tuple[bytes, Image.Image]:
    image = Image.fromarray(NOISE.integers(0, 8, (9, 10), dtype=np.uint8), "P")
    image.putpalette(NOISE.integers(0, 256, 8 * 3, dtype=np.uint8).tolist() + [0] * (248 * 3))
    return encode(image, "PNG"), image.convert("RGB")


def cmyk() -> tuple[bytes, Image.Image]:
    image = Image.fromarray(NOISE.integers(0, 256, (9, 10, 4), dtype=np.uint8), "CMYK")
    data = encode(image, "JPEG", quality=95)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.mode == "CMYK"
    return data, decoded.convert("RGB")


def sixteen_bit_grey() -> tuple[bytes, Image.Image]:
    # High and low bytes differ everywhere: keeping the wrong one, or clipping, shows.
    values = (NOISE.integers(0, 256, (9, 10)) * 256 + NOISE.integers(0, 256, (9, 10))).astype(np.uint16)
    image = Image.fromarray(values)  # mode I;16
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    return data, Image.fromarray((values >> 8).astype(np.uint8), "L").convert("RGB")


@pytest.mark.parametrize("make", [grey, palette, cmyk, sixteen_bit_grey], ids=["L", "P", "CMYK", "I16"])
def test_palette_cmyk_grey_and_16_bit_become_rgb(server, make):
    data, rgb = make()
    seen, expected = seen_by_the_model(server, data), small_reference(rgb)
    assert np.abs(seen - expected).max() <= 1, (seen, expected)
