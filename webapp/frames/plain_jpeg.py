"""Plain JPEG frames, decoded by libjpeg-turbo directly instead of through Pillow.

Why: nearly every frame is a webcam or canvas JPEG with nothing in it but
pixels. Pillow parses such a header in Python (about 0.1 ms here) and sets up
its decoder object by object; simplejpeg hands the bytes to the same
libjpeg-turbo in one call that releases the GIL once. Measured on a 224x224
frame decoded at 1/2 scale: 0.21 against 0.33 ms of CPU, and one GIL hand-off
instead of several (each is a context switch while the event loop is busy).

The pixels must be the ones the documented preprocessing (`images`) gives,
so a frame takes this path only where they cannot differ:

- the header walk below finds a Huffman-coded 8-bit JPEG (baseline,
  extended or progressive) with no EXIF segment (so no orientation to apply)
  and no Adobe segment (so libjpeg's colour transform is the default one);
- it is grey, or YCbCr going to an RGB model (a grey model's luma from a
  colour JPEG is Pillow's own RGB->L formula: that goes through Pillow);
- libjpeg-turbo decodes it at exactly the DCT scale Pillow's draft mode
  would choose, with the same (default) IDCT and upsampling, so the array is
  Pillow's, byte for byte (`tests/frames/test_plain_jpeg.py` checks).

Anything else, and any frame libjpeg-turbo reports a problem with (even a
warning Pillow would ignore), goes through Pillow as before, which gives the
documented errors. The header walk is pure Python on purpose: it runs on the
event loop, where a call that releases the GIL would hand it to a decoding
thread and wait to get it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Start-of-frame markers this path decodes: baseline, extended and progressive
#: Huffman. Lossless, hierarchical and arithmetic-coded JPEGs go to Pillow.
_SOF_PLAIN = {0xC0: False, 0xC1: False, 0xC2: True}
#: Every other start-of-frame marker (C4 is DHT, C8 is reserved, CC is DAC).
_SOF_OTHER = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
#: Markers without a length field.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
#: How far into the file the header walk looks for the frame header; JPEGs
#: with longer headers (big ICC profiles, thumbnails) simply use Pillow.
_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class PlainJpeg:
    """A probed plain JPEG: what decoding it will take, nothing decoded yet.

    `width`/`height` are the decoded size (after DCT scaling), as for a Pillow
    image in draft mode; `encoded` is the size in the file."""

    data: bytes
    encoded: tuple[int, int]
    width: int
    height: int
    grey: bool
    progressive: bool
    #: The pixel limit it was checked against, for Pillow if it must decode it.
    max_pixels: int

    @property
    def scale(self) -> int:
        return self.encoded[0] // self.width if self.width else 1


def frame_header(data: bytes) -> tuple[int, int, int, bool] | None:
    """(width, height, components, progressive) of a plain JPEG, else None.

    None for anything this path leaves to Pillow: not a JPEG, EXIF or Adobe
    segments, an unusual coding or precision, or a header that does not parse.
    """
    if data[:2] != b"\xff\xd8":
        return None
    end = min(len(data), _HEADER_BYTES)
    at = 2
    while at + 4 <= end:
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        length = (data[at + 2] << 8) | data[at + 3]
        if length < 2:
            return None
        body = at + 4
        if marker == 0xE1 and data[body:body + 6] == b"Exif\x00\x00":
            return None  # orientation may apply: Pillow reads it
        if marker == 0xEE and data[body:body + 5] == b"Adobe":
            return None  # Adobe's colour transform flag: left to Pillow
        if marker in _SOF_PLAIN:
            if body + 6 > len(data) or data[body] != 8:
                return None
            height = (data[body + 1] << 8) | data[body + 2]
            width = (data[body + 3] << 8) | data[body + 4]
            components = data[body + 5]
            if components not in (1, 3) or not width or not height:
                return None
            return width, height, components, _SOF_PLAIN[marker]
        if marker in _SOF_OTHER or marker in (0xD9, 0xDA):  # other coding, or no frame header first
            return None
        at += 2 + length
    return None


def probe(data: bytes, target: tuple[int, int, int], max_pixels: int, draft_size) -> PlainJpeg | None:
    """A `PlainJpeg` for `data` decoded for a model input `target` (h, w, c), or None.

    `draft_size(width, height)` is the decoded size Pillow's draft mode
    would give, so both paths decode at the same scale.
    """
    header = frame_header(data)
    if header is None:
        return None
    width, height, components, progressive = header
    grey = components == 1
    if target[2] == 1 and not grey:
        return None  # luma by Pillow's formula, not the JPEG's Y channel
    if target[2] not in (1, 3):
        return None
    decoded = draft_size(width, height)
    return PlainJpeg(data, (width, height), decoded[0], decoded[1], grey, progressive, max_pixels)


def decode(jpeg: PlainJpeg, channels: int) -> np.ndarray | None:
    """uint8 pixels [H, W, C] at the probed scale (C = `channels` for grey
    models, 3 otherwise), or None where Pillow must decode instead."""
    import simplejpeg  # imported on first use: nothing at import time

    try:
        pixels = simplejpeg.decode_jpeg(jpeg.data, "GRAY" if channels == 1 else "RGB",
                                        min_width=jpeg.width, min_height=jpeg.height,
                                        min_factor=jpeg.scale, strict=True)
    except ValueError:
        return None  # corrupt, truncated or merely unusual: Pillow decides
    if pixels.shape[:2] != (jpeg.height, jpeg.width):
        return None  # a scale Pillow would not choose (tiny images)
    return pixels
