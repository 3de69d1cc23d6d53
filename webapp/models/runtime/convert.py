"""Convert a Keras model to LiteRT and prove the conversion faithful.

Run as a separate process (`python -m webapp.models.runtime.convert MODEL OUT
--preprocess MODE`) so the serving process never imports TensorFlow (about
half a gigabyte of RSS) just to convert. The converter:

1. loads the Keras model and converts it with TensorFlow's LiteRT converter
   (float32, builtin ops only, batch dimension left dynamic);
2. runs a probe batch (seeded random images, preprocessed like real frames)
   through both Keras and the LiteRT interpreter and compares the outputs;
3. writes ``OUT`` atomically only when the largest absolute difference is at
   most ``PARITY_TOLERANCE``, plus ``OUT.json`` describing the check.

It prints one JSON line: ``{"ok": true, "max_abs_diff": ...}`` or
``{"ok": false, "reason": ...}``, and exits 0 or 1 accordingly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np

PARITY_TOLERANCE = 1e-4
PROBE_BATCH = 4


def probe_inputs(shape, preprocess: str, seed: int = 0) -> np.ndarray:
    from ..modelspec import normalise

    height, width, channels = shape
    pixels = np.random.default_rng(seed).integers(0, 256, (PROBE_BATCH, height, width, channels), dtype=np.uint8)
    return normalise(pixels, preprocess).astype(np.float32)


def run_interpreter(tflite: bytes, batch: np.ndarray, threads: int = 2) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite, num_threads=threads)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, batch.shape, strict=False)
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, batch)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def convert(model_path: Path, out_path: Path, preprocess: str) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    started = time.perf_counter()
    try:
        # The converter prints progress to stdout; keep stdout for our report.
        with contextlib.redirect_stdout(sys.stderr):
            model = keras.models.load_model(model_path, compile=False)
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            tflite = converter.convert()
    except Exception as exc:  # unsupported ops, custom layers, ...
        return {"ok": False, "reason": f"conversion failed: {type(exc).__name__}: {str(exc)[:500]}"}
    try:
        batch = probe_inputs(tuple(model.inputs[0].shape)[1:], preprocess)
        expected = np.asarray(model(batch, training=False), dtype=np.float32)
        got = run_interpreter(tflite, batch)
    except Exception as exc:
        return {"ok": False, "reason": f"the converted model does not run: {type(exc).__name__}: {str(exc)[:500]}"}
    diff = float(np.max(np.abs(expected - got))) if expected.shape == got.shape else float("inf")
    report = {
        "ok": diff <= PARITY_TOLERANCE, "max_abs_diff": diff, "tolerance": PARITY_TOLERANCE,
        "probe_batch": PROBE_BATCH, "preprocess": preprocess, "tensorflow": tf.__version__,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if not report["ok"]:
        report["reason"] = f"outputs differ by {diff:.3g} (more than {PARITY_TOLERANCE})"
        return report
    write_atomically(out_path, tflite)
    out_path.with_name(out_path.name + ".json").write_text(json.dumps(report))
    return report


def write_atomically(path: Path, data: bytes) -> None:
    """Write beside `path`, then rename: a reader never sees half a model file."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--preprocess", default="raw")
    args = parser.parse_args(argv)
    report = convert(args.model, args.out, args.preprocess)
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
