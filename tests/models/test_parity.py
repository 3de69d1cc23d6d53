"""Server scores equal the Keras model's own prediction on the same input.

The expected side is computed here independently of the server's code: the
documented preprocessing written out with Pillow and numpy, the model called
directly with Keras, and the documented output conversion.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from images import documented_crop_resize, encode, shape_image

TOLERANCE = 1e-4


def documented_input(jpeg: bytes, height: int, width: int, channels: int, preprocess: str) -> np.ndarray:
    image = Image.open(io.BytesIO(jpeg))
    w, h = image.size
    # Draft mode: the smallest DCT scale at which the centre crop still
    # covers the model's input (only when at least 2x larger).
    crop_side = min(w / width, h / height)
    wanted = (int(np.ceil(w / crop_side)), int(np.ceil(h / crop_side)))
    if wanted[0] * 2 <= w and wanted[1] * 2 <= h:
        image.draft(image.mode, wanted)
    image = image.convert("L" if channels == 1 else "RGB")
    pixels = np.asarray(documented_crop_resize(image, height, width), dtype=np.float32)
    pixels = pixels.reshape(height, width, channels)
    return {"raw": pixels, "unit": pixels / 255.0, "symmetric": pixels / 127.5 - 1.0}[preprocess]


def documented_scores(raw: np.ndarray, output: str) -> np.ndarray:
    if raw.shape[-1] == 1:
        p = raw[0] if output != "logits" else 1 / (1 + np.exp(-raw[0]))
        return np.array([1 - p, p])
    if output == "logits":
        e = np.exp(raw - raw.max())
        return e / e.sum()
    return raw


@pytest.mark.parametrize("model_name", ["shapes-float", "logits", "binary", "grey"])
def test_server_scores_match_keras(server, model_store, model_name):
    import keras

    folder = model_store / model_name
    meta = json.loads((folder / "model.json").read_text()) if (folder / "model.json").exists() else {}
    model = keras.models.load_model(folder / "model.keras", compile=False)
    height, width, channels = model.input_shape[1:]
    # A webcam-like, non-square frame: exercises the crop and the resize.
    jpeg = encode(shape_image("star", seed=5, size=(200, 150)), quality=90)
    x = documented_input(jpeg, height, width, channels, meta.get("preprocess", "raw"))
    expected = documented_scores(model(x[None], training=False).numpy()[0], meta.get("output", "probabilities"))

    with server.client() as client:
        result = client.call("frame", {"model": model_name, "image": jpeg, "top_k": 100})
    labels = (folder / "labels.txt").read_text().split() if (folder / "labels.txt").exists() \
        else json.loads((folder / "labels.json").read_text())
    got = {item["label"]: item["score"] for item in result["labels"]}
    assert len(got) == len(expected)
    assert np.allclose([got[label] for label in labels], expected, atol=TOLERANCE), (got, expected)
