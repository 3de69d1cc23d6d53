"""Decoding and preprocessing, unit by unit (no server, no model)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from images import b64, data_url, encode, noise_image, png_header_claiming
from webapp.errors import BadImage, BadRequest, TooLarge
from webapp.frames.images import centre_crop_box, normalise, open_image, payload_bytes, prepare, to_pixels
from webapp.models.modelspec import ModelMetadata, ModelSpec

pytestmark = pytest.mark.quick  # in `make test-fast`

LIMIT = 1_000_000


def spec(height=8, width=8, channels=3, preprocess="raw"):
    return ModelSpec.build("m", "v", (height, width, channels), 2,
                           ModelMetadata(labels=("a", "b"), preprocess=preprocess))


class TestPayloadBytes:
    def test_bytes_base64_and_data_url_give_the_same_bytes(self):
        data = encode(noise_image())
        assert payload_bytes(data, LIMIT) == data
        assert payload_bytes(bytearray(data), LIMIT) == data
        assert payload_bytes(b64(data), LIMIT) == data
        assert payload_bytes(data_url(data), LIMIT) == data
        assert payload_bytes(data_url(data, "image/png"), LIMIT) == data  # the type is not trusted
        wrapped = "\n".join(b64(data)[i:i + 76] for i in range(0, len(b64(data)), 76))
        assert payload_bytes(wrapped, LIMIT) == data

    @pytest.mark.parametrize("text", ["abc", "ab$d", "====", "YQ=", "Y Q = = x"])
    def test_invalid_base64_is_bad_image(self, text):
        with pytest.raises(BadImage):
            payload_bytes(text, LIMIT)

    @pytest.mark.parametrize("url", ["data:text/plain;base64,aGVsbG8=", "data:image/png,rawdata",
                                     "data:;base64,aGVsbG8=", "data:garbage"])
    def test_non_image_or_malformed_data_urls_are_bad_image(self, url):
        with pytest.raises(BadImage):
            payload_bytes(url, LIMIT)

    def test_wrong_type_is_bad_request(self):
        for value in (12, 1.5, ["a"], {"a": 1}, True):
            with pytest.raises(BadRequest):
                payload_bytes(value, LIMIT)

    def test_size_limit_applies_before_and_after_base64(self):
        with pytest.raises(TooLarge):
            payload_bytes(b"x" * (LIMIT + 1), LIMIT)
        with pytest.raises(TooLarge):
            payload_bytes("A" * (LIMIT * 2), LIMIT)

    def test_empty_is_bad_image(self):
        with pytest.raises(BadImage):
            payload_bytes(b"", LIMIT)


class TestOpenImage:
    def test_truncated_jpeg_is_refused(self):
        data = encode(noise_image(200, 200))
        with pytest.raises(BadImage):
            open_image(data[: len(data) // 2], LIMIT)

    def test_unsupported_formats_are_refused(self):
        with pytest.raises(BadImage):
            open_image(encode(noise_image(), "TIFF"), LIMIT)
        with pytest.raises(BadImage):
            open_image(b"%PDF-1.4 not an image", LIMIT)

    def test_pixel_limit_is_checked_from_the_header(self):
        # The data could never decode; too_large (not bad_image) proves the
        # size was refused before any decoding was attempted.
        with pytest.raises(TooLarge):
            open_image(png_header_claiming(100_000, 100_000), LIMIT)

    @pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
    def test_accepted_formats_decode(self, fmt):
        image = open_image(encode(noise_image(30, 20), fmt), LIMIT)
        assert image.size == (30, 20)


class TestToPixels:
    def test_centre_crop_box(self):
        assert centre_crop_box(640, 480, 224, 224) == (80, 0, 560, 480)
        assert centre_crop_box(480, 640, 224, 224) == (0, 80, 480, 560)
        assert centre_crop_box(100, 100, 20, 10) == (0, 25, 100, 75)

    def test_crop_keeps_the_centre(self):
        # Left and right thirds black, centre white: a square crop is all white.
        pixels = np.zeros((100, 300, 3), np.uint8)
        pixels[:, 100:200] = 255
        out = to_pixels(Image.fromarray(pixels), spec(10, 10))
        assert out.shape == (10, 10, 3) and out.min() == 255

    def test_alpha_is_composited_on_white(self):
        transparent = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
        assert to_pixels(transparent, spec(4, 4)).min() == 255

    def test_grey_model_gets_one_channel(self):
        out = to_pixels(noise_image(16, 16), spec(8, 8, 1))
        assert out.shape == (8, 8, 1)

    @pytest.mark.parametrize("value", [0x1234, 0xABCD, 0x00FF, 0xFF00, 0xFFFF, 0x0000])
    def test_sixteen_bit_keeps_its_high_byte(self, value):
        """High and low bytes differ (0x1234 -> 0x12): a wrong byte, clipping or
        rescaling would give another number."""
        image = Image.fromarray(np.full((4, 4), value, np.uint16))
        assert to_pixels(image, spec(4, 4, 1)).ravel().tolist() == [value >> 8] * 16
        assert to_pixels(image, spec(4, 4, 3)).ravel().tolist() == [value >> 8] * 48
        # The same through a real 16-bit PNG file, decoded by the server's own path.
        decoded = open_image(encode(image, "PNG"), LIMIT)
        assert to_pixels(decoded, spec(4, 4, 1)).ravel().tolist() == [value >> 8] * 16

    def test_exif_orientation_is_applied(self):
        tall = Image.new("RGB", (20, 40), "white")
        tall.paste((255, 0, 0), (0, 0, 20, 20))  # red top half
        exif = Image.Exif()
        exif[0x0112] = 3  # rotated 180 degrees
        data = encode(tall, "JPEG", exif=exif, quality=95)
        out = to_pixels(open_image(data, LIMIT), spec(40, 20))
        assert out[-5, 10, 0] > 200 and out[-5, 10, 1] < 60  # red is now at the bottom


def test_jpeg_draft_decoding_stays_close_to_a_full_decode():
    from webapp.frames.images import draft_request

    assert draft_request(640, 480, 224, 224, False) == (299, 224)
    assert draft_request(640, 480, 224, 224, True) == (299, 224)
    assert draft_request(480, 640, 64, 32, False) == (48, 64)
    smooth = Image.radial_gradient("L").resize((1280, 960)).convert("RGB")
    data = encode(smooth, quality=95)
    fast = to_pixels(open_image(data, 10**8, (64, 64, 3)), spec(64, 64)).astype(int)
    full = to_pixels(open_image(data, 10**8), spec(64, 64)).astype(int)
    assert np.abs(fast - full).mean() < 2.0


def test_normalise_modes():
    pixels = np.array([[[0, 127, 255]]], np.uint8)
    assert normalise(pixels, "raw").dtype == np.float32
    assert np.allclose(normalise(pixels, "unit"), [[[0, 127 / 255, 1]]])
    assert np.allclose(normalise(pixels, "symmetric"), [[[-1, 127 / 127.5 - 1, 1]]], atol=1e-6)
    assert np.allclose(normalise(pixels, "caffe"), [[[255 - 103.939, 127 - 116.779, 0 - 123.68]]])
    assert np.allclose(normalise(pixels, "torch"),
                       [[[(0 - 0.485) / 0.229, (127 / 255 - 0.456) / 0.224, (1 - 0.406) / 0.225]]])


def test_prepare_gives_float32_model_input():
    x = prepare(encode(noise_image(64, 48)), spec(8, 8, 3, "unit"), LIMIT)
    assert x.shape == (8, 8, 3) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
