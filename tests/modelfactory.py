"""Builds the small Keras models the tests serve, in code, with fixed seeds.

Nothing is downloaded: every model is made here (random weights are fine,
the tests compare the server with the model itself). Imported lazily by the
fixtures because importing TensorFlow is slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _keras():
    import keras

    keras.utils.set_random_seed(7)
    return keras


def tiny_cnn(input_shape=(32, 32, 3), units=3, activation="softmax"):
    """A small conv net; `activation` decides what kind of output it gives."""
    keras = _keras()
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(units, activation=activation)(x)
    return keras.Model(inputs, outputs)


def slow_cnn(size=320, depth=7, filters=128):
    """A model that takes about a second per frame on 2 cores.

    It is genuinely heavy (full-resolution 3x3 convolutions), so the tests of
    "the server stays responsive during a long inference" and "frames that
    queue meanwhile share the next call" run against a real slow model.
    """
    keras = _keras()
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    for _ in range(depth):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def exploding_cnn(input_shape=(16, 16, 3)):
    """A model that raises at inference on bright images, and only on them.

    It multiplies its scores by a row of the identity matrix picked by the
    image's mean pixel value: row 0 for dark images (and the all-zero warm-up
    batch), an index out of range (a gather error) for bright ones. No custom
    layer, so it loads anywhere; it fails at run time, as buggy models do.
    """
    keras = _keras()
    from keras import ops

    inputs = keras.Input(input_shape)
    scores = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
    row = ops.cast(ops.mean(inputs, axis=(1, 2, 3)), "int32")
    picked = ops.take(ops.eye(3), row, axis=0)
    return keras.Model(inputs, keras.layers.Multiply()([scores, picked]))


def save_directory_model(root: Path, name: str, model, labels=None, meta=None, labels_format="txt",
                         filename="model.keras") -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / filename)
    if labels is not None:
        if labels_format == "txt":
            (folder / "labels.txt").write_text("\n".join(labels) + "\n")
        else:
            (folder / "labels.json").write_text(json.dumps(labels))
    if meta is not None:
        (folder / "model.json").write_text(json.dumps(meta))
    return folder


# Run in a subprocess: tf_keras (Keras 2) and Keras 3 should not share a process.
_LEGACY_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np
    import tf_keras as keras
    keras.utils.set_random_seed(11)
    model = keras.Sequential([
        keras.layers.InputLayer(input_shape=(24, 24, 3)),
        keras.layers.Rescaling(1 / 255.0),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.save(sys.argv[1], save_format="h5")
    # Whole-number pixels, so the probe can be sent as lossless PNG frames.
    probe = np.random.default_rng(0).integers(0, 256, (4, 24, 24, 3)).astype("float32")
    np.save(sys.argv[2], probe)
    np.save(sys.argv[3], model.predict(probe, verbose=0))
    """
)


def save_legacy_keras2_h5(path: Path) -> tuple[Path, Path]:
    """Write a real Keras 2 (tf_keras) HDF5 model; returns (probe inputs, Keras 2 outputs)."""
    probe, expected = path.with_suffix(".probe.npy"), path.with_suffix(".expected.npy")
    subprocess.run([sys.executable, "-c", _LEGACY_SCRIPT, str(path), str(probe), str(expected)],
                   check=True, timeout=300)
    return probe, expected
