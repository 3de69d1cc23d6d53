"""Test images: encoded in memory, the way clients send them."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def noise_image(width=64, height=48, seed=0, mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def shape_image(label: str, seed: int = 0, size=(320, 240)) -> Image.Image:
    """A demo-style picture of one shape, as a webcam would see it."""
    from webapp.demo.shapes import render

    return render(np.random.default_rng(seed), label, size=size)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_url(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{b64(data)}"


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size but carries almost no data:
    a decompression bomb must be refused from the header alone."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def documented_crop_resize(image: Image.Image, height: int, width: int) -> Image.Image:
    """The README's step 4 written out independently of the server's code:
    the largest centred box with the model's aspect ratio, then BILINEAR."""
    w, h = image.size
    if w * height > h * width:
        crop = round(h * width / height)
        box = ((w - crop) // 2, 0, (w - crop) // 2 + crop, h)
    else:
        crop = round(w * height / width)
        box = (0, (h - crop) // 2, w, (h - crop) // 2 + crop)
    return image.crop(box).resize((width, height), Image.BILINEAR)
