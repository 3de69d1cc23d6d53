"""Image decoding and preprocessing: payload -> bytes -> pixels -> model input.

The documented preprocessing (what the parity test and the webcam page rely
on) is:

1. The payload is bytes, a data URL (``data:image/...;base64,...``) or bare
   base64. Base64 is decoded strictly (alphabet and padding checked).
2. Pillow opens the bytes (never a path); only JPEG, PNG, WebP, GIF and BMP are
   accepted, whatever the data URL claims. The size is checked against
   ``MAX_IMAGE_PIXELS`` from the header, before any pixel is decoded. Truncated
   files are refused, never decoded as partial images.
3. Animated images use their first frame; EXIF orientation is applied.
4. Colour: alpha (RGBA, LA, palette with transparency) is composited onto
   white, as a shape drawn on paper would be; CMYK, 16-bit and other modes are
   converted to 8-bit RGB (or grey for 1-channel models) by Pillow's standard
   conversions, 16-bit by dropping the low byte.
5. Geometry: the image is centre-cropped to the model's aspect ratio, then
   resized to the model's input size with Pillow's BILINEAR filter (which
   antialiases when downscaling). A JPEG much larger than that is first
   decoded at a reduced scale (1/2, 1/4 or 1/8, by the decoder's DCT scaling:
   Pillow's draft mode), never below the size the crop needs; this is part of
   the pipeline, not an approximation of it, and is ~10x cheaper than a full
   decode of a 640x480 frame. A plain JPEG (no EXIF, grey or YCbCr) is
   decoded by libjpeg-turbo without Pillow (`plain_jpeg`): the same library,
   settings and scale, so the same pixels, for less CPU.
6. Values: float32, then the model's ``preprocess`` mode: raw (0-255), unit
   (/255), symmetric (/127.5 - 1), caffe (BGR minus ImageNet means) or torch
   (/255, minus mean, over std, per RGB channel).

Everything here is CPU work that releases the GIL in Pillow's C code; callers
run it off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np
from PIL import Image

from ..errors import BadImage, BadRequest, TooLarge
from ..models.modelspec import ModelSpec, normalise
from . import plain_jpeg
from .plain_jpeg import PlainJpeg

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP"})
_FORMATS = sorted(ACCEPTED_FORMATS)

# Pillow's own bomb check (`Image.MAX_IMAGE_PIXELS`, process-wide) is left as
# Pillow sets it: MAX_IMAGE_PIXELS may not exceed it (see config), so every
# image it warns about or refuses is over our limit too, and is refused here
# with our message. The limit itself is passed to each call.

_DATA_URL_RE = re.compile(r"data:([^;,]*)((?:;[^;,]*)*),", re.IGNORECASE)
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_WHITESPACE = re.compile(r"\s+")



def payload_bytes(image, max_bytes: int) -> bytes:
    """The encoded image carried by a frame's `image` field.

    Raises `TooLarge` before decoding base64 that would exceed `max_bytes`,
    `BadImage` for invalid base64 or a data URL that is not an image, and
    `BadRequest` for a value of the wrong type.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif isinstance(image, str):
        text = image
        match = _DATA_URL_RE.match(text[:256])
        if text[:5].lower() == "data:":
            if not match:
                raise BadImage("The data URL is malformed.")
            mime, params = match.group(1).strip().lower(), match.group(2).lower()
            if not mime.startswith("image/"):
                raise BadImage(f"The data URL holds {mime or 'no type'}, not an image.")
            if ";base64" not in params:
                raise BadImage("Only base64 data URLs are accepted.")
            text = text[match.end():]
        # Base64 inflates by 4/3: refuse oversize payloads before decoding them.
        if len(text) * 3 // 4 > max_bytes + 3:
            raise TooLarge(f"The image is larger than the {max_bytes} byte limit.")
        text = _WHITESPACE.sub("", text)
        if not text or len(text) % 4 or not _BASE64_RE.fullmatch(text):
            raise BadImage("The image is not valid base64.")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadImage("The image is not valid base64.") from None
    else:
        raise BadRequest("'image' must be a data URL, a base64 string or binary data.")
    if len(data) > max_bytes:
        raise TooLarge(f"The image is {len(data)} bytes, over the {max_bytes} byte limit.")
    if not data:
        raise BadImage("The image is empty.")
    return data


def open_image(data: bytes, max_pixels: int, target: tuple[int, int, int] | None = None) -> Image.Image:
    """Decode encoded bytes into a fully loaded Pillow image (first frame).

    With `target` (height, width, channels) a JPEG is decoded in draft mode at
    the smallest DCT scale that still covers the target after the crop.
    """
    return load_image(_probe_with_pillow(data, max_pixels, target))


def probe_image(data: bytes, max_pixels: int,
                target: tuple[int, int, int] | None = None) -> Image.Image | PlainJpeg:
    """Open and check an image from its header alone; no pixel is decoded yet.

    Cheap (tens of microseconds): what `decode_cost` needs to know before the
    decode memory is reserved. With `target`, a plain JPEG (see `plain_jpeg`)
    is probed without Pillow and decoded by libjpeg-turbo directly.
    """
    if target is not None:
        target_h, target_w = target[0], target[1]
        plain = plain_jpeg.probe(data, target, max_pixels,
                                 lambda width, height: draft_step(width, height, target_h, target_w))
        if plain is not None:
            _check_size(*plain.encoded, max_pixels)
            return plain
    return _probe_with_pillow(data, max_pixels, target)


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise BadImage("The image has no pixels.")
    if width * height > max_pixels:
        raise TooLarge(
            f"The image is {width}x{height} pixels, over the {max_pixels} pixel limit."
        )


def _probe_with_pillow(data: bytes, max_pixels: int, target: tuple[int, int, int] | None) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=_FORMATS)
    except Image.DecompressionBombError as exc:  # over twice Pillow's limit, so over ours
        raise TooLarge(f"The image is over the {max_pixels} pixel limit ({exc}).") from None
    except Image.UnidentifiedImageError:
        raise BadImage("The data is not a JPEG, PNG, WebP, GIF or BMP image.") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage(f"The image header is unreadable ({exc}).") from None
    width, height = image.size
    _check_size(width, height, max_pixels)
    image.info["webapp_encoded_size"] = (width, height)
    if target is not None and image.format == "JPEG":
        _draft_for(image, *target)
    return image


def load_image(image: Image.Image) -> Image.Image:
    """Decode the pixels of a probed image; truncated or corrupt data is refused."""
    try:
        image.seek(0)
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        # Includes "image file is truncated": never serve a partial decode.
        raise BadImage(f"The image is truncated or corrupt ({exc}).") from None
    return image


#: Bytes per pixel Pillow stores for each mode once decoded (3-channel modes
#: are stored padded to 4 bytes).
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
#: Modes `Image.reduce` cannot shrink; they are converted at full size first.
_UNREDUCIBLE = frozenset({"1", "P", "I;16", "I;16B", "I;16L", "I;16N"})
#: Working copies of a small (unreduced) image while it is converted, cropped
#: and resized: the RGBA compositing path is the costliest, at 4 bytes each.
_SMALL_IMAGE_COPIES = 5


def decode_cost(image: Image.Image, target: tuple[int, int] | None = None) -> int:
    """Bytes that decoding a probed image through `to_pixels` holds at its peak.

    An estimate from the header, on the high side: the decoded pixels, the
    full-size copy a mode needs before it can be reduced, and the working
    copies of the reduced image. A progressive JPEG also keeps every DCT
    coefficient of the full-size image while it decodes, whatever the draft
    scale.
    """
    if isinstance(image, PlainJpeg):
        return _plain_decode_cost(image, target)
    width, height = image.size
    pixels = width * height
    stored = _STORED_BYTES.get(image.mode, 4)
    copy = 0
    if image.mode in _UNREDUCIBLE:
        copy += 4
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        copy += 4  # premultiplied copy for an alpha-correct reduction
    factor, small = _working_copies(width, height, target)
    cost = pixels * (stored + (copy if factor > 1 else 0)) + small
    if image.format == "JPEG" and (image.info.get("progressive") or image.info.get("progression")):
        cost += _coefficient_bytes(*image.info.get("webapp_encoded_size", image.size), len(image.getbands()))
    return cost


def _plain_decode_cost(jpeg: PlainJpeg, target: tuple[int, int] | None) -> int:
    """`decode_cost` of a plain JPEG: libjpeg-turbo's array (3 or 1 bytes a
    pixel), Pillow's copy of it (4 or 1), the working copies of the reduced
    image and, for a progressive or multi-scan file, libjpeg's full-size
    coefficients."""
    pixels = jpeg.width * jpeg.height
    cost = pixels * (2 if jpeg.grey else 8)  # 1 + 1 grey; 3 + 4 RGB, and a byte to spare
    cost += _working_copies(jpeg.width, jpeg.height, target)[1]
    if jpeg.buffered:
        cost += _coefficient_bytes(*jpeg.encoded, 1 if jpeg.grey else 3)
    return cost


def _working_copies(width: int, height: int, target: tuple[int, int] | None) -> tuple[int, int]:
    """(the integer reduction factor, bytes of the working copies of the reduced
    image) for a decoded image of this size."""
    factor = _reduction(width, height, *target, transposed=False) if target else 1
    return factor, (width // factor + 1) * (height // factor + 1) * 4 * _SMALL_IMAGE_COPIES


def _coefficient_bytes(encoded_w: int, encoded_h: int, components: int) -> int:
    """libjpeg's full-size DCT coefficients (2 bytes each), kept whole while it
    decodes a progressive or multi-scan file, whatever the draft scale."""
    return encoded_w * encoded_h * components * 2


def _reduction(width: int, height: int, target_h: int, target_w: int, transposed: bool) -> int:
    """The integer box-reduction factor that leaves the crop at least 2x the target."""
    if transposed:
        target_h, target_w = target_w, target_h
    left, top, right, bottom = centre_crop_box(width, height, target_w, target_h)
    scale = min((right - left) / target_w, (bottom - top) / target_h)
    return max(1, int(scale / REDUCING_GAP))


#: Images whose crop is over this many times the model's input are first
#: shrunk by an integer factor (a box average, `Image.reduce`) to between 2x
#: and 4x the input, then resized as usual: the idea of Pillow's
#: `reducing_gap`, applied before colour conversion so the full-size image is
#: never copied.
REDUCING_GAP = 2


def _reduce_for(image: Image.Image, target_h: int, target_w: int, orientation: int | None = None) -> Image.Image:
    if orientation is None:
        orientation = image.getexif().get(0x0112, 1)
    factor = _reduction(image.width, image.height, target_h, target_w, orientation in (5, 6, 7, 8))
    if factor < 2:
        return image
    if image.mode in _UNREDUCIBLE:
        image = image.convert("RGBA") if "transparency" in image.info else _to_colour(image, 3)
    if image.mode in ("RGBA", "LA"):
        # Averaging straight alpha would bleed the colour of transparent
        # pixels; premultiplied values average exactly like composited ones.
        premultiplied = image.convert("RGBa" if image.mode == "RGBA" else "La")
        image = premultiplied.reduce(factor).convert(image.mode)
    elif image.mode == "PA":
        image = image.convert("RGBA").convert("RGBa").reduce(factor).convert("RGBA")
    else:
        image = image.reduce(factor)
    # The reduced image has no EXIF: apply the orientation here.
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


#: EXIF orientation -> the transpose that shows the image upright (as
#: `ImageOps.exif_transpose` does).
_ORIENTATION_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                          6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                          8: Image.Transpose.ROTATE_90}


def draft_request(width: int, height: int, target_h: int, target_w: int, transposed: bool) -> tuple[int, int]:
    """The decoded size at which the centre crop is exactly the target size."""
    if transposed:  # EXIF orientations 5-8 swap the axes after decoding
        target_h, target_w = target_w, target_h
    left, top, right, bottom = centre_crop_box(width, height, target_w, target_h)
    crop_w, crop_h = right - left, bottom - top
    return (-(-width * target_w // crop_w), -(-height * target_h // crop_h))


def draft_step(width: int, height: int, target_h: int, target_w: int) -> int:
    """The DCT scale (1/1, 1/2, 1/4, 1/8) Pillow's draft mode decodes an upright
    JPEG at for this target: its rule, the largest that still covers the request."""
    requested = draft_request(width, height, target_h, target_w, False)
    if requested[0] * 2 > width or requested[1] * 2 > height:
        return 1
    scale = min(width // requested[0], height // requested[1])
    return next(step for step in (8, 4, 2, 1) if scale >= step)


def _draft_for(image: Image.Image, target_h: int, target_w: int, channels: int) -> None:
    orientation = image.getexif().get(0x0112, 1)
    requested = draft_request(image.width, image.height, target_h, target_w, orientation in (5, 6, 7, 8))
    if requested[0] * 2 <= image.width and requested[1] * 2 <= image.height:
        image.draft("L" if channels == 1 and image.mode == "L" else image.mode, requested)


def _to_colour(image: Image.Image, channels: int) -> Image.Image:
    """Convert any Pillow mode to 8-bit grey, RGB or RGBA, deterministically."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.uint32 if image.mode == "I" else np.uint16)
        image = Image.fromarray((array >> 8).clip(0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.asarray(image).clip(0, 255).astype(np.uint8), "L")
    if channels == 4:
        return image.convert("RGBA")
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode in ("P", "L", "RGB") and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(paper, rgba)
    target = "L" if channels == 1 else "RGB"
    # `convert` to the same mode is a full copy; the next steps copy anyway.
    return image if image.mode == target else image.convert(target)


def centre_crop_box(width: int, height: int, target_w: int, target_h: int) -> tuple[int, int, int, int]:
    """The largest centred box with the target's aspect ratio."""
    if width * target_h > height * target_w:  # too wide: trim the sides
        crop_w = max(1, round(height * target_w / target_h))
        left = (width - crop_w) // 2
        return left, 0, left + crop_w, height
    crop_h = max(1, round(width * target_h / target_w))
    top = (height - crop_h) // 2
    return 0, top, width, top + crop_h


def to_pixels(image: Image.Image, spec: ModelSpec) -> np.ndarray:
    """Reduce, orient, convert, crop and resize: uint8 array [H, W, C] for the model."""
    reduced = _reduce_for(image, spec.height, spec.width)
    if reduced is image:
        # What `ImageOps.exif_transpose` does for pixels, without the copy it
        # makes of an upright image. (A reduced image is already upright.)
        method = _ORIENTATION_TRANSPOSE.get(image.getexif().get(0x0112, 1))
        image = image.transpose(method) if method is not None else image
    else:
        image = reduced
    return _fit(image, spec)


def _plain_pixels(jpeg: PlainJpeg, spec: ModelSpec) -> np.ndarray:
    """`to_pixels` of a plain JPEG decoded by libjpeg-turbo; the same steps
    after the decode (it is upright; a grey one becomes RGB after any
    shrinking, as in Pillow's path)."""
    decoded = plain_jpeg.decode(jpeg)
    if decoded is None:  # Pillow decodes it, or refuses it with the documented error
        return to_pixels(load_image(_probe_with_pillow(jpeg.data, jpeg.max_pixels,
                                                    (spec.height, spec.width, spec.channels))), spec)
    image = Image.fromarray(decoded[:, :, 0] if decoded.shape[2] == 1 else decoded)
    return _fit(_reduce_for(image, spec.height, spec.width, orientation=1), spec)


def _fit(image: Image.Image, spec: ModelSpec) -> np.ndarray:
    """Colour, centre crop, resize: an upright image -> uint8 array [H, W, C]."""
    image = _to_colour(image, spec.channels)
    box = centre_crop_box(image.width, image.height, spec.width, spec.height)
    if box != (0, 0, image.width, image.height):
        # Crop first: resizing with `box=` lets the filter read past the box.
        image = image.crop(box)
    image = image.resize((spec.width, spec.height), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return pixels


def prepare(data: bytes, spec: ModelSpec, max_pixels: int) -> np.ndarray:
    """Encoded image bytes -> float32 model input [H, W, C] (steps 2-6 above)."""
    return model_input(probe_image(data, max_pixels, (spec.height, spec.width, spec.channels)), spec)


def model_input(probed: Image.Image | PlainJpeg, spec: ModelSpec) -> np.ndarray:
    """A probed image -> float32 model input: the part that decodes pixels."""
    if isinstance(probed, PlainJpeg):
        return normalise(_plain_pixels(probed, spec), spec.preprocess)
    return normalise(to_pixels(load_image(probed), spec), spec.preprocess)


def trusted_input(data: bytes, spec: ModelSpec) -> np.ndarray:
    """`prepare` for an operator's own pictures (int8 calibration at publish):
    exactly what a frame goes through, without the clients' pixel limit."""
    return prepare(data, spec, 10**9)
