"""Train the bundled demo model: a small CNN that classifies drawn shapes.

    python -m webapp.demo.train [--out models/shapes] [--seed 0] [--epochs N] [--train-size N]

Budget: at most 5 minutes on a 2-core CPU, data generation included, and at
least 95% accuracy on a held-out generated set. The script exits non-zero
(and leaves any existing artefacts untouched) if the accuracy bar is missed.

Why it is built this way:

* Data is synthetic (``webapp.demo.shapes``) and rendered at 128 px, then
  downscaled to 64 px exactly as the server does, so the model sees the same
  resampling as in production. The held-out set uses a different seed, so it
  shares no image with the training set.
* Generation costs more per image than a training step, so the set is modest
  and each epoch shows it under a fresh random dihedral transform (flips and
  90-degree turns): every label is invariant under them, they are nearly free,
  and they multiply the effective data by 8. The renderer already randomises
  everything else (colour, pose, lighting, blur, noise, JPEG).
* The network is a plain conv/BN/ReLU stack. A stride-2 first layer halves
  the cost of everything after it; the smallest shapes (16 px at 64 px) still
  span 8 px after it. Four conv stages give a receptive field covering the
  largest shapes, and global average pooling instead of a big Dense layer
  keeps the file small (~0.2M parameters, under 1 MB) and the model
  translation-tolerant.
* The model takes raw 0-255 float pixels; ``Rescaling(1/255)`` is inside it
  so the server's preprocess is simply "raw".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

from . import shapes

INPUT_SIZE = (64, 64)  # (width, height) the model takes
RENDER_SIZE = (128, 128)  # rendered larger, then downscaled like the server does
HOLDOUT_SIZE = 2000
HOLDOUT_SEED_OFFSET = 1_000_003  # held-out seed = seed + this: a different stream
MIN_ACCURACY = 0.95
MAX_MODEL_BYTES = 2 * 1024 * 1024
TIME_BUDGET_S = 300.0
# Time kept back for evaluation and saving when deciding whether another
# epoch still fits in the budget.
RESERVE_S = 20.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m webapp.demo.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="models/shapes", help="output directory (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=6, help="training epochs (default: %(default)s)")
    p.add_argument("--train-size", type=int, default=12000, help="training images (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default: %(default)s)")
    return p.parse_args(argv)


def build_model():
    """The CNN. Layers are named so that a fresh copy (used for saving
    without optimizer state) lines up with the trained one."""
    import keras
    from keras import layers

    def conv(x, filters, name, strides=1):
        # No bias: BatchNorm's beta makes it redundant.
        x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(name=f"{name}_relu")(x)

    inputs = keras.Input(shape=(INPUT_SIZE[1], INPUT_SIZE[0], 3), name="pixels")
    x = layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = conv(x, 24, "stem", strides=2)  # 32x32
    x = conv(x, 32, "b1")
    x = layers.MaxPooling2D(name="b1_pool")(x)  # 16x16
    x = conv(x, 64, "b2")
    x = layers.MaxPooling2D(name="b2_pool")(x)  # 8x8
    x = conv(x, 96, "b3")
    x = layers.MaxPooling2D(name="b3_pool")(x)  # 4x4
    x = conv(x, 128, "b4")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    outputs = layers.Dense(len(shapes.LABELS), activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="shapes")


def _train_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
    """Shuffled batches under a random per-image dihedral transform.

    Stateless random ops keyed by a seeded stream keep this reproducible
    under op determinism."""
    import tensorflow as tf

    def dihedral(batch, seeds):
        images, labels = batch
        images = tf.cast(images, tf.float32)
        u = tf.random.stateless_uniform([tf.shape(images)[0], 3], seed=seeds)
        pick = lambda i: (u[:, i] < 0.5)[:, None, None, None]  # noqa: E731
        images = tf.where(pick(0), tf.transpose(images, [0, 2, 1, 3]), images)
        images = tf.where(pick(1), tf.reverse(images, [1]), images)
        images = tf.where(pick(2), tf.reverse(images, [2]), images)
        return images, labels

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds)).map(dihedral)
    return ds.prefetch(2)


def _atomic_write(path: str, write) -> None:
    """Write via a temporary file in the same directory, then os.replace, so
    a reader (the server) never sees a half-written file."""
    directory, name = os.path.split(path)
    suffix = os.path.splitext(name)[1]  # keras insists on the .keras suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=directory)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file 0600; give it the permissions a plain
        # open() would have, so a server running as another user can read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_text(path: str, text: str) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    _atomic_write(path, write)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    # Data first, before TensorFlow is imported: the generator forks worker
    # processes, which is only safe before TF starts its thread pools.
    holdout_seed = args.seed + HOLDOUT_SEED_OFFSET
    x_train, y_train = shapes.make_dataset(args.train_size, args.seed, INPUT_SIZE, RENDER_SIZE)
    x_hold, y_hold = shapes.make_dataset(HOLDOUT_SIZE, holdout_seed, INPUT_SIZE, RENDER_SIZE)
    gen_s = time.monotonic() - start
    print(f"generated {len(x_train)} training + {len(x_hold)} held-out images in {gen_s:.1f}s", flush=True)

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    # Costs a little speed on CPU; buys bit-for-bit reruns.
    tf.config.experimental.enable_op_determinism()

    model = build_model()
    steps = args.epochs * (len(x_train) // args.batch_size)
    # Short warm-up then cosine decay: converges reliably from scratch with
    # BatchNorm in few epochs, which is what the time budget allows.
    schedule = keras.optimizers.schedules.CosineDecay(
        1e-4, decay_steps=max(1, steps - steps // 20), warmup_target=3e-3, warmup_steps=steps // 20
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    params = model.count_params()
    print(f"model: {params} parameters", flush=True)

    class Deadline(keras.callbacks.Callback):
        """Safety net for slow machines: stop before an epoch that would
        overrun the time budget (a complete run never triggers it)."""

        stopped = False

        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            epoch_s = time.monotonic() - self.t
            if time.monotonic() - start + epoch_s + RESERVE_S > TIME_BUDGET_S and epoch + 1 < args.epochs:
                print(f"time budget: stopping after epoch {epoch + 1}", flush=True)
                self.model.stop_training = True
                Deadline.stopped = True

    train_ds = _train_dataset(x_train, y_train, args.batch_size, args.seed)
    t = time.monotonic()
    history = model.fit(train_ds, epochs=args.epochs, verbose=2, shuffle=False, callbacks=[Deadline()])
    train_s = time.monotonic() - t
    epochs_run = len(history.history["loss"])

    # predict_on_batch rather than predict: no tf.data pipeline, no log noise.
    batches = [x_hold[i : i + 250].astype(np.float32) for i in range(0, len(x_hold), 250)]
    pred = np.concatenate([model.predict_on_batch(b).argmax(axis=1) for b in batches])
    accuracy = float((pred == y_hold).mean())
    per_class = {label: float((pred[y_hold == i] == i).mean()) for i, label in enumerate(shapes.LABELS)}
    confusion = np.zeros((len(shapes.LABELS),) * 2, dtype=int)
    np.add.at(confusion, (y_hold, pred), 1)
    print(f"held-out accuracy: {accuracy:.4f} on {len(y_hold)} images (seed {holdout_seed})")
    for label, acc in per_class.items():
        print(f"  {label:>8}: {acc:.4f}")
    print("confusion (rows true, cols predicted, order " + ", ".join(shapes.LABELS) + "):")
    print(confusion)

    if accuracy < MIN_ACCURACY:
        print(f"FAILED: held-out accuracy {accuracy:.4f} < {MIN_ACCURACY}; artefacts not written", file=sys.stderr)
        return 1

    # Save a fresh, never-compiled copy: the file then carries no optimizer
    # state (which would triple its size) and loads without compile warnings.
    clean = build_model()
    clean.set_weights(model.get_weights())
    os.makedirs(args.out, exist_ok=True)
    model_path = os.path.join(args.out, "model.keras")
    _atomic_write(model_path, clean.save)
    model_bytes = os.path.getsize(model_path)

    labels = list(shapes.LABELS)
    _write_text(os.path.join(args.out, "labels.txt"), "\n".join(labels) + "\n")
    spec = {"preprocess": "raw", "output": "probabilities", "labels": labels}
    _write_text(os.path.join(args.out, "model.json"), json.dumps(spec, indent=2) + "\n")

    import PIL

    duration = time.monotonic() - start
    report = {
        "seed": args.seed,
        "holdout_seed": holdout_seed,
        "train_size": len(x_train),
        "holdout_size": len(x_hold),
        "input_size": list(INPUT_SIZE),
        "render_size": list(RENDER_SIZE),
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "epochs_run": epochs_run,
        "stopped_by_time_budget": Deadline.stopped,
        "parameters": params,
        "model_bytes": model_bytes,
        "generation_seconds": round(gen_s, 1),
        "training_seconds": round(train_s, 1),
        "duration_seconds": round(duration, 1),
        "final_train_loss": float(history.history["loss"][-1]),
        "final_train_accuracy": float(history.history["accuracy"][-1]),
        "holdout_accuracy": accuracy,
        "per_class_accuracy": per_class,
        "confusion": confusion.tolist(),
        "labels": labels,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        },
    }
    _write_text(os.path.join(args.out, "training.json"), json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}: model.keras {model_bytes} bytes, {params} parameters; total {duration:.1f}s")
    if model_bytes > MAX_MODEL_BYTES:
        print(f"FAILED: model.keras is {model_bytes} bytes > {MAX_MODEL_BYTES}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
