"""Give the demo model its int8 file, through the same path users take.

    python -m webapp.demo.int8 [--out models/shapes] [--images 500] [--seed 2000003]

Renders `--images` demo pictures as a webcam would send them (JPEG, a few
frame sizes, a seed stream shared with neither the training nor the
held-out set of `webapp.demo.train`), then runs

    python -m webapp publish OUT/model.keras --name shapes --store OUT/.. \
        --no-convert --quantize int8 --calibration PICTURES

which calibrates on four pictures in five, measures top-1 agreement with the
float model on the fifth, and refuses below 98%. Refused, the demo ships
without an int8 file (any older one is removed, since it would belong to
another model); the float `model.tflite` is left as `make train-demo`'s
conversion wrote it (`--no-convert`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import shapes

#: Frame sizes (width, height) the pictures are rendered at, in turn.
SIZES = ((224, 224), (320, 240), (160, 120))
INT8_FILE = "model.int8.tflite"


def write_pictures(folder: Path, count: int, seed: int) -> None:
    for index in range(count):
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        label = shapes.LABELS[index % len(shapes.LABELS)]
        picture = shapes.render(rng, label, SIZES[index % len(SIZES)])
        picture.save(folder / f"{index:04d}-{label}.jpg", quality=85)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webapp.demo.int8", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/shapes"))
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seed", type=int, default=2_000_003)
    args = parser.parse_args(argv)
    out = args.out.resolve()
    with tempfile.TemporaryDirectory(prefix="demo-int8-") as scratch:
        pictures = Path(scratch)
        write_pictures(pictures, args.images, args.seed)
        done = subprocess.run(
            [sys.executable, "-m", "webapp", "publish", str(out / "model.keras"), "--name", out.name,
             "--store", str(out.parent), "--labels", str(out / "labels.txt"), "--preprocess", "raw",
             "--no-convert", "--quantize", "int8", "--calibration", str(pictures)],
            capture_output=True, text=True)
    for line in done.stderr.splitlines():
        if line.startswith(("int8:", "error:", "note:")):
            print(line, file=sys.stderr)
    if done.returncode != 0:
        (out / INT8_FILE).unlink(missing_ok=True)
        print(f"the demo ships without an int8 file ({out / INT8_FILE} removed)", file=sys.stderr)
        return 0 if "was not published: int8 agreement" in done.stderr else done.returncode
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps({"int8": report["int8"], "bytes": (out / INT8_FILE).stat().st_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
