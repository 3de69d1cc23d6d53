"""A broken version is tried once: not downloaded or converted again until the
store has another one, one `failed` notice for it, and the version before it
keeps serving. S3 is moto's server, counted. Frames sent to a model that
cannot be served leave nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import modelfactory as mf
from images import encode, noise_image
from serverproc import ROOT, ServerProcess, rss_bytes

PREFIX = "projects"
REFRESH = 1.0



@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    """A small model with its LiteRT conversion (as `publish` uploads it)."""
    folder = tmp_path_factory.mktemp("good")
    mf.tiny_cnn().save(folder / "model.keras")
    subprocess.run([sys.executable, "-m", "webapp.models.runtime.convert", str(folder / "model.keras"),
                    str(folder / "model.tflite")], cwd=ROOT, check=True, capture_output=True, timeout=300)
    return folder


def frame(seed=0):
    return {"model": "alpha", "image": encode(noise_image(40, 40, seed=seed))}


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_a_broken_new_version_is_fetched_and_converted_once_and_the_old_one_keeps_serving(
        s3, good_files, tmp_path, mode):
    bucket = s3.new_bucket()
    client = s3.client()
    key = f"{PREFIX}/alpha/model.keras"
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/alpha/labels.txt", Body=b"red\ngreen\nblue\n")
    client.upload_file(str(good_files / "model.tflite"), bucket, f"{PREFIX}/alpha/model.tflite")
    client.upload_file(str(good_files / "model.keras"), bucket, key)
    server = ServerProcess(mode, env={**s3.server_env(bucket, PREFIX), "MODEL_CACHE_DIR": str(tmp_path / "cache"),
                                      "DEFAULT_MODEL": "alpha", "MODEL_REFRESH_SECONDS": str(REFRESH)},
                           log_dir=tmp_path).start()
    try:
        server.wait_ready()
        with server.client() as sio:
            first = sio.call("frame", frame())
            assert "labels" in first, first
            # A new version that cannot be served: no LiteRT file, and a model file Keras cannot read.
            client.delete_object(Bucket=bucket, Key=f"{PREFIX}/alpha/model.tflite")
            client.put_object(Bucket=bucket, Key=key, Body=b"PK\x03\x04 not a keras file")
            answers, failed_at, seed = [], None, 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                answers.append(sio.call("frame", frame(seed)))
                seed += 1
                if failed_at is None and any(n.get("state") == "failed" for n in list(sio.events["model_status"].queue)):
                    failed_at = time.monotonic()
                if failed_at is not None and time.monotonic() - failed_at > 6 * REFRESH:
                    break  # six refresh periods after the failure
                time.sleep(0.1)
            notices = [n for n in sio.drain("model_status") if n.get("model") == "alpha"]
        assert failed_at is not None, server.log()[-3000:]
        assert all("labels" in a and a["version"] == first["version"] for a in answers), \
            [a for a in answers if "labels" not in a][:3]
        failed = [n for n in notices if n["state"] == "failed"]
        assert len(failed) == 1, notices
        assert failed[0]["serving"] == first["version"] and "cannot be served" in failed[0]["message"]
        assert s3.gets(bucket, key) == 2, s3.summary()  # the good version, then the broken one once
        log = server.log()
        assert log.count("converting model alpha to LiteRT") == 1, log[-3000:]
        assert log.count("failed to load, still serving") == 1
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_frames_for_a_model_that_cannot_be_served_leave_nothing_behind(tmp_path, mode):
    """A client that keeps sending frames to a model that cannot be served gets
    `model_unavailable` for each, and the server keeps none of them. (The
    error kept for the model used to be raised again for each frame, and its
    traceback grew by each frame's stack, image included: 3 MB a frame.)"""
    store = tmp_path / "store"
    shutil.copytree(ROOT / "models" / "shapes", store / "misdescribed")
    (store / "misdescribed" / "model.json").write_text(json.dumps({"preprocess": "no-such-mode"}))
    payload = os.urandom(3 * 1024 * 1024)  # never decoded: the model fails first
    env = {"MODEL_STORE": str(store), "DEFAULT_MODEL": "", "MODEL_CACHE_DIR": str(tmp_path / "cache")}
    with ServerProcess(mode, env=env, log_dir=tmp_path) as server:
        server.start()
        with server.client() as sio:
            first = sio.call("frame", {"model": "misdescribed", "image": payload})
            assert first["code"] == "model_unavailable" and "invalid metadata" in first["message"], first
            before = rss_bytes(server.serving_pid)
            for index in range(60):
                answer = sio.call("frame", {"id": index, "model": "misdescribed", "image": payload})
                assert answer["code"] == "model_unavailable", answer
            grown = rss_bytes(server.serving_pid) - before
            # The server still answers the same client.
            assert sio.call("models")["models"] is not None
    assert grown < 40 * 1024 * 1024, f"{grown / 2**20:.1f} MB kept after 60 refused frames of 3 MB"
