"""A download is checked before it is cached, multipart uploads (> 8 MB)
included: a file whose content does not match its ETag (the MD5 of its parts'
MD5s) is refused and never cached, and the next good download is served.

S3 is moto's server, counted, with a middleware that flips one byte in the
middle of chosen downloads (same size, so a size check alone lets it through;
a flipped weight in a LiteRT file still loads and serves wrong scores).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from images import encode, noise_image
from s3server import CountingS3Server
from serverproc import ROOT, ServerProcess

PREFIX = "projects"


class CorruptingS3(CountingS3Server):
    """Moto that flips one byte in the next `corrupt[path]` GETs of an object."""

    def __init__(self):
        super().__init__()
        self.corrupt: dict[str, int] = {}

    def _counting(self, environ, start_response):
        body = super()._counting(environ, start_response)
        path = environ.get("PATH_INFO", "")
        if environ["REQUEST_METHOD"] != "GET" or not self.corrupt.get(path):
            return body
        self.corrupt[path] -= 1
        data = bytearray(b"".join(body))
        data[len(data) // 2] ^= 0xFF
        return [bytes(data)]


#: The `s3` fixture (tests/conftest.py) serves this test module with it.
S3_SERVER = CorruptingS3


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    """A model of ~9.5 MB and its LiteRT file of the same size: both over
    boto3's 8 MB multipart threshold, so both are uploaded in two parts."""
    import modelfactory as mf

    keras = mf._keras()
    inputs = keras.Input((32, 32, 3))
    hidden = keras.layers.Dense(768, activation="relu")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    folder = tmp_path_factory.mktemp("big-model")
    model.save(folder / "model.keras")
    subprocess.run([sys.executable, "-m", "webapp.models.runtime.convert", str(folder / "model.keras"),
                    str(folder / "model.tflite")], cwd=ROOT, check=True, capture_output=True, timeout=300)
    assert (folder / "model.tflite").stat().st_size > 8 * 1024 * 1024
    return folder


def cached_entries(cache: Path, name: str) -> list[Path]:
    return sorted((cache / "entries" / name).glob("*/stored.json"))


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_a_corrupted_multipart_download_is_refused_and_never_cached(s3, big_model, tmp_path, mode):
    bucket = s3.new_bucket()
    client = s3.client()
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/alpha/labels.txt", Body=b"red\ngreen\nblue\n")
    tflite_key = f"{PREFIX}/alpha/model.tflite"
    client.upload_file(str(big_model / "model.tflite"), bucket, tflite_key)
    client.upload_file(str(big_model / "model.keras"), bucket, f"{PREFIX}/alpha/model.keras")
    etag = client.head_object(Bucket=bucket, Key=tflite_key)["ETag"].strip('"')
    assert etag.endswith("-2"), etag  # really a multipart upload: no plain MD5 to compare with
    s3.corrupt[f"/{bucket}/{tflite_key}"] = 1
    cache = tmp_path / "cache"
    server = ServerProcess(mode, env={**s3.server_env(bucket, PREFIX), "MODEL_CACHE_DIR": str(cache),
                                      "DEFAULT_MODEL": ""}, log_dir=tmp_path).start()
    try:
        with server.client() as sio:
            image = encode(noise_image(32, 32, seed=1))
            refused = sio.call("frame", {"model": "alpha", "image": image}, timeout=120)
            assert refused.get("code") == "model_unavailable", refused
            assert cached_entries(cache, "alpha") == []  # the bad copy was not kept
            deadline, answer = time.monotonic() + 90, refused
            while "labels" not in answer and time.monotonic() < deadline:
                time.sleep(0.5)  # the load is tried again after its back-off
                answer = sio.call("frame", {"model": "alpha", "image": image}, timeout=120)
        assert "labels" in answer, (answer, server.log()[-3000:])
        assert "does not match its multipart ETag" in server.log()
        assert s3.gets(bucket, tflite_key) == 2  # the corrupted download, then the good one
        [entry] = cached_entries(cache, "alpha")
        assert (entry.parent / "model.tflite").read_bytes() == (big_model / "model.tflite").read_bytes()
    finally:
        server.stop()
