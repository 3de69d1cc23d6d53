"""A version is one immutable set of files: its id covers every file, and a
download is pinned (IfMatch) to the listing it came from, so a file replaced
mid-download makes the server read the new set again instead of mixing two.
S3 is moto's server, counted, with the model download slowed down."""

from __future__ import annotations

import time

import pytest

from images import encode, noise_image
from serverproc import ServerProcess
from test_model_cache import PREFIX, SlowS3, model_folder, upload  # noqa: F401 - fixture

__all__ = ["model_folder"]


#: The `s3` fixture (tests/conftest.py) serves this test module with it.
S3_SERVER = SlowS3


def frame(seed=0):
    return {"model": "alpha", "image": encode(noise_image(40, 40, seed=seed)), "top_k": 2}


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_a_file_replaced_mid_download_is_read_again_never_mixed(s3, model_folder, tmp_path, mode):
    bucket = s3.new_bucket()
    key = upload(s3, bucket, "alpha", model_folder)  # labels left, right
    s3.slow[f"/{bucket}/{key}"] = 3.0
    server = ServerProcess(mode, env={**s3.server_env(bucket, PREFIX), "MODEL_CACHE_DIR": str(tmp_path / "cache"),
                                      "DEFAULT_MODEL": ""}, log_dir=tmp_path).start()
    try:
        with server.client() as client:
            client.emit("frame", frame())  # starts the download; the answer comes with the model
            deadline = time.monotonic() + 30
            while s3.gets(bucket, key) == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            # Mid-download, the labels are replaced: a new version of the set.
            s3.client().put_object(Bucket=bucket, Key=f"{PREFIX}/alpha/labels.txt", Body=b"up\ndown\n")
            answer = client.next("label", timeout=60)
            assert sorted(item["label"] for item in answer["labels"]) == ["down", "up"], answer
            again = client.call("frame", frame(1))
            assert sorted(item["label"] for item in again["labels"]) == ["down", "up"]
        assert "changed during its download" in server.log()
        assert s3.gets(bucket, key) == 2  # the model file read again with the new set
        assert s3.gets(bucket, f"{PREFIX}/alpha/labels.txt") == 2  # the old one refused (412), then the new
    finally:
        server.stop()


def test_the_version_id_covers_every_file(s3, model_folder, tmp_path):
    bucket = s3.new_bucket()
    upload(s3, bucket, "alpha", model_folder)
    server = ServerProcess("eventlet", env={**s3.server_env(bucket, PREFIX), "DEFAULT_MODEL": "alpha",
                                            "MODEL_CACHE_DIR": str(tmp_path / "cache"),
                                            "MODEL_REFRESH_SECONDS": "0.5"}, log_dir=tmp_path).start()
    try:
        server.wait_ready()
        with server.client() as client:
            first = client.call("frame", frame())
            s3.client().put_object(Bucket=bucket, Key=f"{PREFIX}/alpha/labels.txt", Body=b"up\ndown\n")
            deadline, answer = time.monotonic() + 30, first
            while answer["labels"][0]["label"] not in ("up", "down") and time.monotonic() < deadline:
                time.sleep(0.1)
                answer = client.call("frame", frame())
        assert answer["labels"][0]["label"] in ("up", "down")
        assert answer["version"] != first["version"]  # only the labels changed: still a new version
    finally:
        server.stop()
