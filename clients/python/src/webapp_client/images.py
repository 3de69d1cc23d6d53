"""Turn what a caller holds (a path, bytes, a PIL image, a numpy array) into a frame's `image`.

PIL and numpy are optional: they are imported only when such an object is
passed, and a caller holding one already has them installed (numpy arrays
need PIL too, to be JPEG-encoded).
"""

from __future__ import annotations

import io
import os

#: Quality of the JPEG made from PIL images and arrays: the server resizes to
#: the model's input (usually far smaller), so higher only costs bandwidth.
JPEG_QUALITY = 90


def encode_image(image) -> bytes | str:
    """The frame's `image` field for `image`; raises TypeError/ValueError/OSError clearly."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, str) and image.startswith("data:"):
        return image  # a data URL: the server decodes it
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as file:
            return file.read()
    if _is_pil_image(image):
        return _jpeg(image)
    if _is_array(image):
        return _jpeg(_array_to_pil(image))
    raise TypeError(f"cannot send a {type(image).__name__} as an image: give a path, bytes, "
                    "a PIL image or a numpy array of shape (height, width, 3) and dtype uint8")


def _is_pil_image(image) -> bool:
    # Checked by module name so PIL is not imported for callers that never use it.
    return type(image).__module__.startswith("PIL.") and hasattr(image, "save") and hasattr(image, "mode")


def _is_array(image) -> bool:
    return hasattr(image, "__array_interface__") and hasattr(image, "shape") and hasattr(image, "dtype")


def _array_to_pil(array):
    if len(array.shape) != 3 or array.shape[2] != 3 or str(array.dtype) != "uint8":
        raise ValueError(f"a numpy image must have shape (height, width, 3) and dtype uint8 (RGB), "
                         f"got shape {tuple(array.shape)} and dtype {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"a numpy image must not be empty, got shape {tuple(array.shape)}")
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("sending numpy arrays needs Pillow: pip install 'webapp-client[images]'") from None
    return Image.fromarray(array, "RGB")


def _jpeg(pil_image) -> bytes:
    if pil_image.mode != "RGB":
        pil_image = pil_image.convert("RGB")
    buffer = io.BytesIO()
    pil_image.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
