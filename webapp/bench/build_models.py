"""Build the benchmark's models in a separate process (it imports TensorFlow).

`python -m webapp.bench.build_models STORE [--copies N]` writes a MobileNetV2
with random weights (224x224, 1000 classes; no weights are downloaded) into
the directory store STORE as `mobilenetv2`, converted to LiteRT beside it,
plus N-1 copies under other names for the memory measurement. With
`--int8`, also `mobilenetv2-int8` (and its N-1 copies): the same model with
a full-integer `model.int8.tflite` beside it (`runtime/quantize.py`,
calibrated on the bench's synthetic frames), which the server prefers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", type=Path)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--int8", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from ..models.runtime.convert import convert

    keras.utils.set_random_seed(0)
    folder = args.store / "mobilenetv2"
    folder.mkdir(parents=True, exist_ok=True)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000)
    model.save(folder / "model.keras")
    (folder / "model.json").write_text(json.dumps({"preprocess": "symmetric", "output": "probabilities"}))
    report = convert(folder / "model.keras", folder / "model.tflite", "symmetric")
    if not report["ok"]:
        raise SystemExit(f"conversion failed: {report}")
    for index in range(2, args.copies + 1):
        shutil.copytree(folder, args.store / f"mobilenetv2-{index}", dirs_exist_ok=True)
    int8 = _int8(args.store, folder, args.copies) if args.int8 else None
    print(json.dumps({"model_bytes": (folder / "model.keras").stat().st_size,
                      "tflite_bytes": (folder / "model.tflite").stat().st_size, **report, "int8": int8}))
    return 0


def _int8(store: Path, folder: Path, copies: int) -> dict:
    from ..models.modelspec import ModelMetadata, ModelSpec
    from ..frames.images import trusted_input
    from ..models.runtime.quantize import quantize
    from .run import jpeg

    calibration = store.parent / "calibration"
    calibration.mkdir(exist_ok=True)
    for seed in range(20):  # 16 calibrate, 4 held out
        (calibration / f"{seed:03d}.jpg").write_bytes(jpeg(224, 224, seed=seed))
    target = store / "mobilenetv2-int8"
    shutil.copytree(folder, target, dirs_exist_ok=True)
    spec = ModelSpec.build("mobilenetv2-int8", "-", (224, 224, 3), 1000, ModelMetadata(preprocess="symmetric"))
    report = quantize(folder / "model.keras", target / "model.int8.tflite", spec, calibration, trusted_input)
    meta = json.loads((target / "model.json").read_text())
    meta["int8"] = {key: report[key] for key in ("agreement", "held_out", "calibration_images")}
    (target / "model.json").write_text(json.dumps(meta))
    for index in range(2, copies + 1):
        shutil.copytree(target, store / f"mobilenetv2-int8-{index}", dirs_exist_ok=True)
    return report


if __name__ == "__main__":
    raise SystemExit(main())
