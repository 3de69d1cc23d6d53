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
#: The other segments a plain header may hold: Huffman and quantization
#: tables, the restart interval, comments. Any other marker (EXIF, Adobe, ICC,
#: MPF and other application segments, fill bytes, markers Pillow refuses)
#: leaves the frame to Pillow.
_TABLES = frozenset({0xC4, 0xDB, 0xDD, 0xFE})
_APP0, _SOS = 0xE0, 0xDA
#: A JFIF APP0 segment's length field is 16 (more with a thumbnail); Pillow
#: refuses shorter ones.
_JFIF_LENGTH = 16
#: Smaller images go to Pillow, and such images cost nothing to decode either
#: way. Below 8 px, simplejpeg (which picks the smallest scale that covers
#: the size asked for) could reach Pillow's decoded size at a smaller scale
#: than Pillow's (3x3 for 2x2: 3/8, not 1/2); from 8 px up every scale gives
#: a size of its own. And libjpeg-turbo's scaled decoding of a partial DCT
#: block differs between the versions bundled with Pillow and with
#: simplejpeg (measured: 5x5 decoded at 1/4 differs, nothing from 6x6 up,
#: every size to 40 and three subsamplings tried).
MIN_SIDE = 16
#: How far into the file the header walk looks for the start of scan; JPEGs
#: with longer headers simply use Pillow.
_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class FrameHeader:
    width: int
    height: int
    components: int
    #: libjpeg keeps every coefficient of the image while it decodes one of
    #: these: progressive, or baseline in several scans (not interleaved).
    buffered: bool


@dataclass(frozen=True, slots=True)
class PlainJpeg:
    """A probed plain JPEG: what decoding it will take, nothing decoded yet.

    `width`/`height` are the decoded size (after DCT scaling by 1/`step`), as
    for a Pillow image in draft mode; `encoded` is the size in the file."""

    data: bytes
    encoded: tuple[int, int]
    step: int
    grey: bool
    buffered: bool
    #: The pixel limit it was checked against, for Pillow if it must decode it.
    max_pixels: int

    @property
    def width(self) -> int:
        return -(-self.encoded[0] // self.step)

    @property
    def height(self) -> int:
        return -(-self.encoded[1] // self.step)


def frame_header(data: bytes) -> FrameHeader | None:
    """The frame header of a plain JPEG, read up to its first scan, else None.

    None for anything this path leaves to Pillow: not a JPEG, any segment but
    the plain ones (`_TABLES`, a JFIF APP0, one frame header), an unusual
    coding or precision, or a header that does not parse.
    """
    if data[:2] != b"\xff\xd8":
        return None
    end = min(len(data), _HEADER_BYTES)
    at, frame = 2, None
    while at + 4 <= end:
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        length = (data[at + 2] << 8) | data[at + 3]
        body = at + 4
        if length < 2 or at + 2 + length > len(data):
            return None
        if marker == _SOS:  # the header is complete
            if frame is None or length < 3:
                return None
            width, height, components, progressive = frame
            return FrameHeader(width, height, components, progressive or data[body] != components)
        if marker in _SOF_PLAIN:
            if frame is not None or length < 8 or data[body] != 8:  # a second frame header, short, not 8-bit
                return None
            components = data[body + 5]
            if components not in (1, 3) or length != 8 + 3 * components:
                return None
            height = (data[body + 1] << 8) | data[body + 2]
            width = (data[body + 3] << 8) | data[body + 4]
            if width < MIN_SIDE or height < MIN_SIDE:
                return None
            frame = (width, height, components, _SOF_PLAIN[marker])
        elif marker == _APP0:
            if data[body:body + 5] != b"JFIF\x00" or length < _JFIF_LENGTH:
                return None
        elif marker not in _TABLES:
            return None
        at += 2 + length
    return None


def probe(data: bytes, target: tuple[int, int, int], max_pixels: int, draft_step) -> PlainJpeg | None:
    """A `PlainJpeg` for `data` decoded for a model input `target` (h, w, c), or None.

    `draft_step(width, height)` is the DCT scale (1, 2, 4 or 8) Pillow's draft
    mode would decode at, so both paths decode alike.
    """
    header = frame_header(data)
    if header is None:
        return None
    grey = header.components == 1
    if target[2] == 1 and not grey:
        return None  # luma by Pillow's formula, not the JPEG's Y channel
    if target[2] not in (1, 3):
        return None
    step = draft_step(header.width, header.height)
    return PlainJpeg(data, (header.width, header.height), step, grey, header.buffered, max_pixels)


def decode(jpeg: PlainJpeg) -> np.ndarray | None:
    """uint8 pixels [H, W, C] at the probed scale, grey (C = 1) or RGB as
    the file is, or None where Pillow must decode instead."""
    import simplejpeg  # imported on first use: nothing at import time

    scaled = jpeg.step > 1
    try:
        pixels = simplejpeg.decode_jpeg(jpeg.data, "GRAY" if jpeg.grey else "RGB",
                                        min_width=jpeg.width if scaled else 0,
                                        min_height=jpeg.height if scaled else 0,
                                        min_factor=jpeg.step, strict=True)
    except ValueError:
        return None  # corrupt, truncated or merely unusual: Pillow decides
    if pixels.shape[:2] != (jpeg.height, jpeg.width):
        return None  # cannot happen (`MIN_SIDE`); never serve another scale
    return pixels
