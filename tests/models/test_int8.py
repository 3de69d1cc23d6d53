"""int8 models: `publish --quantize int8` measures agreement, refuses a poor one, servers prefer it.

The demo `shapes` model is published with pictures like the ones it was
trained on as the calibration set; the server is the real one, as a
subprocess, reading the same directory store.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import requests

from images import encode, shape_image
from s3server import CountingS3Server
from serverproc import ROOT, ServerProcess

SHAPES = ROOT / "models" / "shapes"
LABELS = ("circle", "square", "triangle", "star")


def publish(store, name, calibration, *extra, env=None):
    return subprocess.run(
        [sys.executable, "-m", "webapp", "publish", str(SHAPES / "model.keras"), "--name", name,
         "--store", str(store), "--labels", str(SHAPES / "labels.txt"), "--quantize", "int8",
         "--calibration", str(calibration), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    for i in range(40):
        shape_image(LABELS[i % 4], seed=100 + i, size=(160, 120)).convert("RGB").save(folder / f"{i:03d}.jpg")
    return folder


@pytest.fixture(scope="module")
def published(tmp_path_factory, calibration):
    store = tmp_path_factory.mktemp("store")
    done = publish(store, "shapes-q", calibration)
    assert done.returncode == 0, done.stderr[-3000:]
    return store, done


def test_publish_measures_and_prints_the_agreement(published):
    store, done = published
    printed = re.search(r"int8: top-1 agreement with the float model ([\d.]+)% \((\d+)/(\d+) held-out", done.stderr)
    assert printed, done.stderr[-2000:]
    meta = json.loads((store / "shapes-q" / "model.json").read_text())
    assert meta["int8"]["held_out"] == int(printed.group(3)) == 8  # every 5th of 40
    assert meta["int8"]["agreement"] == pytest.approx(float(printed.group(1)) / 100, abs=1e-3)
    assert meta["int8"]["agreement"] >= 0.98
    int8_file = store / "shapes-q" / "model.int8.tflite"
    assert 0 < int8_file.stat().st_size < (store / "shapes-q" / "model.tflite").stat().st_size
    assert json.loads(done.stdout.strip().splitlines()[-1])["int8"]["file"] == "model.int8.tflite"


def test_publish_refuses_an_agreement_below_the_threshold_unless_forced(tmp_path, calibration):
    refused = publish(tmp_path, "shapes-strict", calibration, "--min-agreement", "1.01")
    assert refused.returncode == 1
    assert "top-1 agreement" in refused.stderr
    assert "was not published" in refused.stderr and "--force" in refused.stderr
    assert not (tmp_path / "shapes-strict").exists()  # nothing uploaded

    forced = publish(tmp_path, "shapes-strict", calibration, "--min-agreement", "1.01", "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "published anyway" in forced.stderr
    assert (tmp_path / "shapes-strict" / "model.int8.tflite").is_file()


def test_quantize_needs_a_calibration_set(tmp_path):
    done = subprocess.run([sys.executable, "-m", "webapp", "publish", str(SHAPES / "model.keras"), "--name", "x",
                           "--store", str(tmp_path), "--quantize", "int8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--calibration" in done.stderr


def _answers(url_server, images):
    client = url_server.client()
    try:
        return [client.call("frame", {"model": "shapes-q", "image": image, "top_k": 1}) for image in images]
    finally:
        client.close()


@pytest.mark.parametrize("async_mode", ["eventlet", "threading"])
def test_server_serves_the_int8_file_and_the_setting_turns_it_off(published, tmp_path, async_mode):
    store, _ = published
    images = [encode(shape_image(label, seed=500 + i)) for i, label in enumerate(LABELS)]
    runs = {}
    for serve_int8 in ("true", "false"):
        server = ServerProcess(async_mode, env={"MODEL_STORE": str(store), "DEFAULT_MODEL": "shapes-q",
                                                "MODEL_CACHE_DIR": str(tmp_path / f"cache-{serve_int8}"),
                                                "SERVE_INT8": serve_int8}, log_dir=tmp_path).start()
        try:
            answers = _answers(server, images)
            details = requests.get(f"{server.url}/api/models/shapes-q", timeout=30).json()
        finally:
            server.stop()
        assert all("labels" in answer for answer in answers), answers
        runs[serve_int8] = answers, details
    int8_answers, int8_details = runs["true"]
    float_answers, float_details = runs["false"]
    assert {a["runtime"] for a in int8_answers} == {"litert-int8"}
    assert int8_details["runtime"] == "litert-int8"
    meta = json.loads((store / "shapes-q" / "model.json").read_text())
    assert int8_details["int8"]["agreement"] == meta["int8"]["agreement"]
    assert {a["runtime"] for a in float_answers} == {"litert"}
    assert float_details["runtime"] == "litert" and "int8" not in float_details
    # The same pictures get the same best label from either file.
    assert [a["labels"][0]["label"] for a in int8_answers] == [a["labels"][0]["label"] for a in float_answers]
    assert np.allclose([a["labels"][0]["score"] for a in int8_answers],
                       [a["labels"][0]["score"] for a in float_answers], atol=0.1)


def test_int8_travels_through_s3(tmp_path, calibration):
    """Published in the directory layout, and uploaded by hand in the flat one
    (`<name>.keras` with `<name>.labels.txt` and `<name>.int8.tflite` beside it)."""
    s3 = CountingS3Server().start()
    try:
        bucket = s3.new_bucket()
        env = s3.server_env(bucket, "projects")
        done = publish(f"s3://{bucket}/projects", "shapes-s3", calibration, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        uploads = {"flat.keras": "model.keras", "flat.labels.txt": "labels.txt", "flat.int8.tflite": "model.int8.tflite"}
        for key, source in uploads.items():
            s3.client().upload_file(str(SHAPES / source), bucket, f"projects/{key}")
        keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"]}
        assert "projects/shapes-s3/model.int8.tflite" in keys
        server = ServerProcess("eventlet", env={**env, "DEFAULT_MODEL": "", "MODEL_CACHE_DIR": str(tmp_path / "cache")},
                               log_dir=tmp_path).start()
        try:
            client = server.client()
            try:
                answers = {name: client.call("frame", {"model": name, "image": encode(shape_image("star", seed=3))})
                           for name in ("shapes-s3", "flat")}
            finally:
                client.close()
            details = requests.get(f"{server.url}/api/models/shapes-s3", timeout=30).json()
        finally:
            server.stop()
        for answer in answers.values():
            assert answer["runtime"] == "litert-int8", answer
            assert answer["labels"][0]["label"] == "star"
        assert details["int8"]["agreement"] >= 0.98
        assert s3.gets(bucket, "projects/flat.int8.tflite") == 1
    finally:
        s3.stop()


def test_the_bundled_demo_model_serves_its_int8_file(tmp_path):
    """A fresh checkout answers the demo from model.int8.tflite; SERVE_INT8=false serves the float file.

    The demo ships its int8 file only because its agreement held when it was
    made (webapp/demo/int8.py, through `publish --quantize int8`)."""
    meta = json.loads((SHAPES / "model.json").read_text())
    assert meta["int8"]["agreement"] >= 0.98 and meta["int8"]["held_out"] >= 100, meta
    images = [encode(shape_image(label, seed=900 + i)) for i, label in enumerate(LABELS)]
    for serve_int8, runtime in (("true", "litert-int8"), ("false", "litert")):
        server = ServerProcess("eventlet", env={"MODEL_STORE": str(ROOT / "models"), "DEFAULT_MODEL": "shapes",
                                                "MODEL_CACHE_DIR": str(tmp_path / f"cache-{serve_int8}"),
                                                "SERVE_INT8": serve_int8}, log_dir=tmp_path).start()
        try:
            client = server.client()
            try:
                answers = [client.call("frame", {"model": "shapes", "image": image, "top_k": 1}) for image in images]
            finally:
                client.close()
        finally:
            server.stop()
        assert [a["runtime"] for a in answers] == [runtime] * len(LABELS), answers
        assert [a["labels"][0]["label"] for a in answers] == list(LABELS), answers
