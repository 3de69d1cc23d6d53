"""Full-integer (int8) LiteRT models, and how often they agree with the float model.

`publish --quantize int8 --calibration DIR` calls `quantize` (TensorFlow is
imported here, in the CLI's process, never in a server). It:

1. reads the images in DIR (sorted by name) and splits them: every
   `HELD_OUT_EVERY`-th image is held out, the others calibrate;
2. prepares every image exactly as the server would for this model, with
   the `prepare` its caller passes (`webapp.frames.images.prepare`: decode,
   crop, resize, the model's `preprocess`; passed in, because the frame's
   path depends on models and not the other way round);
3. converts the Keras model with the calibration images as the
   representative dataset: int8 weights and activations, builtin int8 ops
   only, float32 input and output (so the server feeds it as it feeds the
   float model). Measured on this CPU, MobileNetV2 runs in 5.0 ms per image
   this way against 8.4 ms in float32; dynamic-range quantization was slower
   than float (10.7 ms), so it is not offered;
4. runs the held-out images through the Keras model and the int8 model and
   counts how often their top-1 labels agree.

The caller decides whether the agreement is good enough (`publish` refuses
below `MIN_AGREEMENT` unless `--force`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .convert import write_atomically

MIN_AGREEMENT = 0.98
HELD_OUT_EVERY = 5
#: Calibration images used at most (conversion time grows with them).
MAX_CALIBRATION = 300
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class QuantizeError(ValueError):
    """The calibration set or the model cannot make an int8 version."""


def split_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """(calibration, held out) image paths from `folder`, deterministically."""
    if not folder.is_dir():
        raise QuantizeError(f"{folder} is not a directory")
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(images) < HELD_OUT_EVERY * 2:
        raise QuantizeError(f"{folder} has {len(images)} images; at least {HELD_OUT_EVERY * 2} are needed "
                            f"(every {HELD_OUT_EVERY}th is held out to measure agreement)")
    held_out = images[HELD_OUT_EVERY - 1::HELD_OUT_EVERY]
    calibration = [p for p in images if p not in set(held_out)][:MAX_CALIBRATION]
    return calibration, held_out


#: Encoded image bytes and a model's spec -> that model's float32 input [H, W, C].
Prepare = Callable[[bytes, object], np.ndarray]


def prepare_images(paths: list[Path], spec, prepare: Prepare) -> np.ndarray:
    """The images as the server feeds them to this model: float32 [n, H, W, C]."""
    return np.stack([prepare(path.read_bytes(), spec) for path in paths]).astype(np.float32)


def quantize(model_path: Path, out_path: Path, spec, calibration_dir: Path, prepare: Prepare) -> dict:
    """Write the int8 model to `out_path`; returns the report (agreement, sizes)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    started = time.perf_counter()
    calibration_paths, held_out_paths = split_images(calibration_dir)
    calibration = prepare_images(calibration_paths, spec, prepare)
    held_out = prepare_images(held_out_paths, spec, prepare)
    with contextlib.redirect_stdout(sys.stderr):  # the converter prints; stdout is the CLI's report
        model = keras.models.load_model(model_path, compile=False)

        def representative():
            for image in calibration:
                yield [image[None]]

        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
        try:
            tflite = converter.convert()
        except Exception as exc:  # ops without an int8 kernel, ...
            raise QuantizeError(f"int8 conversion failed: {type(exc).__name__}: {str(exc)[:500]}") from None
        expected = np.asarray(model.predict(held_out, batch_size=16, verbose=0), dtype=np.float32)
    got = run_model(tflite, held_out)
    agree = int(np.sum(expected.reshape(len(held_out), -1).argmax(1) == got.reshape(len(held_out), -1).argmax(1)))
    write_atomically(out_path, tflite)
    return {"agreement": round(agree / len(held_out), 4), "agreeing": agree, "held_out": len(held_out),
            "calibration_images": len(calibration), "bytes": len(tflite), "tensorflow": tf.__version__,
            "seconds": round(time.perf_counter() - started, 1)}


def run_model(tflite: bytes, batch: np.ndarray) -> np.ndarray:
    """A LiteRT model's outputs for `batch`, one frame at a time (as the server runs it)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite, num_threads=2)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    output = interpreter.get_output_details()[0]["index"]
    rows = []
    for frame in batch:
        interpreter.set_tensor(index, frame[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(output)[0].copy())
    return np.stack(rows)
