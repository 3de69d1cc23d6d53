"""Build the benchmark's models in a separate process (it imports TensorFlow).

`python -m webapp.bench.build_models STORE [--copies N]` writes a MobileNetV2
with random weights (224x224, 1000 classes; no weights are downloaded) into
the directory store STORE as `mobilenetv2`, converted to LiteRT beside it,
plus N-1 copies under other names for the memory measurement.
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
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from ..runtime.convert import convert

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
    print(json.dumps({"model_bytes": (folder / "model.keras").stat().st_size,
                      "tflite_bytes": (folder / "model.tflite").stat().st_size, **report}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
