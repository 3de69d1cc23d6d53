"""`publish` to S3: nothing is uploaded for a model that does not load, and a good
one goes up as `labels.txt` and `model.json`, then the model file last (its
LiteRT file before it), so a server checking mid-publish never pairs a new model
with old labels. Counted at moto's server, in the order the PUTs arrived.
"""

from __future__ import annotations

import os
import subprocess
import sys

from s3server import CREDENTIALS
from serverproc import ROOT

PREFIX = "projects"


def publish(*args, env):
    return subprocess.run([sys.executable, "-m", "webapp", "publish", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


def puts(s3, bucket) -> list[str]:
    with s3._lock:
        return [path.split(f"/{bucket}/{PREFIX}/", 1)[1] for method, path, _ in s3.requests
                if method == "PUT" and path.startswith(f"/{bucket}/{PREFIX}/")]


def test_publish_uploads_nothing_for_a_bad_model_then_metadata_before_the_model(s3, model_store, tmp_path):
    bucket = s3.new_bucket()
    env = {**CREDENTIALS, "S3_ENDPOINT_URL": s3.url}
    store = f"s3://{bucket}/{PREFIX}"
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n")

    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a keras file at all")
    refused = publish(str(broken), "--name", "gamma", "--store", store, "--labels", str(labels), env=env)
    assert refused.returncode != 0, refused.stdout
    assert "Traceback" not in refused.stderr, refused.stderr
    assert puts(s3, bucket) == []  # refused before anything was uploaded

    done = publish(str(model_store / "tiny" / "model.keras"), "--name", "gamma", "--store", store,
                   "--labels", str(labels), "--preprocess", "unit", env=env)
    assert done.returncode == 0, done.stderr
    order = puts(s3, bucket)
    assert set(order) == {"gamma/labels.txt", "gamma/model.json", "gamma/model.tflite", "gamma/model.keras",
                          "gamma/manifest.json"}, order
    # The metadata first (in either order: both carry the labels), then the
    # LiteRT file and the model file, and the manifest that completes the version last.
    assert set(order[:2]) == {"gamma/labels.txt", "gamma/model.json"}, order
    assert order[2:] == ["gamma/model.tflite", "gamma/model.keras", "gamma/manifest.json"], order
