"""Models from S3 (moto's server on loopback), counted at the S3 server.

Every test gets its own bucket; the prediction server runs as a subprocess
with its own cache directory, exactly as in production.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests

import modelfactory as mf
from images import encode, noise_image
from s3server import CREDENTIALS
from serverproc import ROOT, ServerProcess

PREFIX = "projects"



@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Small Keras files with distinct weights, built once: name -> path."""
    import keras

    root = tmp_path_factory.mktemp("s3models")
    files = {}
    for index, name in enumerate(["alpha", "beta", "gamma", "alpha-v2"]):
        keras.utils.set_random_seed(100 + index)
        model = mf.tiny_cnn()
        path = root / f"{name}.keras"
        model.save(path)
        files[name] = path
    probe, expected = mf.save_legacy_keras2_h5(root / "legacy.h5")
    files["legacy"], files["legacy-probe"], files["legacy-expected"] = root / "legacy.h5", probe, expected
    return files


def upload_model(s3, bucket, name, path, labels=("red", "green", "blue")):
    client = s3.client()
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{name}/labels.txt", Body="\n".join(labels).encode())
    client.upload_file(str(path), bucket, f"{PREFIX}/{name}/model.keras")
    return f"{PREFIX}/{name}/model.keras"


def start_server(s3, bucket, tmp_path, mode="eventlet", cache=None, **env):
    cache = cache or tmp_path / "cache"
    settings = {**s3.server_env(bucket, PREFIX), "MODEL_CACHE_DIR": str(cache), "DEFAULT_MODEL": ""}
    settings.update({k: str(v) for k, v in env.items()})
    proc = ServerProcess(async_mode=mode, env=settings, log_dir=tmp_path)
    return proc.start()


def frame(model, seed=0, **extra):
    return {"model": model, "image": encode(noise_image(48, 40, seed=seed)), **extra}


def models_by_name(server):
    return {m["name"]: m for m in requests.get(server.url + "/api/models", timeout=10).json()["models"]}


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_lazy_download_exactly_once_under_concurrent_first_frames(s3, model_files, tmp_path, mode):
    bucket = s3.new_bucket()
    alpha = upload_model(s3, bucket, "alpha", model_files["alpha"])
    beta = upload_model(s3, bucket, "beta", model_files["beta"])
    server = start_server(s3, bucket, tmp_path, mode)
    try:
        listed = models_by_name(server)
        assert {"alpha", "beta"} <= set(listed)
        assert not listed["alpha"]["loaded"]
        with server.client() as client:
            assert {m["name"] for m in client.call("models")["models"]} >= {"alpha", "beta"}
        assert s3.gets(bucket, alpha) == 0 and s3.gets(bucket, beta) == 0, s3.summary()

        clients = [server.client() for _ in range(20)]
        results = [None] * 20

        def send(i):
            results[i] = clients[i].call("frame", frame("alpha", seed=i, id=i), timeout=120)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(150)
        statuses = [s for c in clients for s in c.drain("model_status")]
        for c in clients:
            c.close()
        assert all(r and r.get("labels") and r["id"] == i for i, r in enumerate(results)), results
        assert s3.gets(bucket, alpha) == 1, s3.summary()
        assert s3.gets(bucket, beta) == 0
        states = {s["state"] for s in statuses}
        assert {"downloading", "loading", "ready"} <= states, statuses
        assert models_by_name(server)["alpha"]["loaded"] is True
    finally:
        server.stop()


def test_restart_reuses_the_cache_and_warms_recent_models(s3, model_files, tmp_path):
    bucket = s3.new_bucket()
    alpha = upload_model(s3, bucket, "alpha", model_files["alpha"])
    cache = tmp_path / "cache"
    first = start_server(s3, bucket, tmp_path, cache=cache)
    try:
        with first.client() as client:
            version = client.call("frame", frame("alpha"))["version"]
        # The warm set is written by the maintenance loop: wait for it to name alpha.
        warm, deadline = cache / "warm.json", time.monotonic() + 30
        while not (warm.exists() and "alpha" in json.loads(warm.read_text() or "{}")):
            assert time.monotonic() < deadline, first.log()
            time.sleep(0.2)
    finally:
        first.stop()
    assert s3.gets(bucket, alpha) == 1

    second = start_server(s3, bucket, tmp_path, cache=cache)
    try:
        deadline = time.monotonic() + 60
        while not models_by_name(second)["alpha"]["loaded"]:  # loaded in the background
            assert time.monotonic() < deadline, second.log()
            time.sleep(0.2)
        with second.client() as client:
            result = client.call("frame", frame("alpha"))
        assert result["version"] == version
        assert s3.gets(bucket, alpha) == 1, "an unchanged model was downloaded again"
    finally:
        second.stop()


def test_memory_and_disk_bounds_evict_least_recently_used(s3, model_files, tmp_path):
    bucket = s3.new_bucket()
    keys = {name: upload_model(s3, bucket, name, model_files[name]) for name in ("alpha", "beta", "gamma")}
    sizes = {name: model_files[name].stat().st_size + len("red\ngreen\nblue") for name in keys}
    # Room on disk for two of the three models; memory for one at a time.
    disk_mb = (sizes["alpha"] + sizes["beta"] + sizes["gamma"] // 2) / (1024 * 1024)
    server = start_server(s3, bucket, tmp_path, MODEL_CACHE_MAX_MB=disk_mb, MODEL_MEMORY_MB=0.001)
    cache_entries = tmp_path / "cache" / "entries"
    try:
        with server.client() as client:
            assert client.call("frame", frame("alpha"))["labels"]
            assert client.call("frame", frame("beta"))["labels"]
            listed = models_by_name(server)
            assert listed["beta"]["loaded"] and not listed["alpha"]["loaded"]  # memory bound
            # alpha comes back from the disk cache: no new download
            assert client.call("frame", frame("alpha"))["labels"]
            assert s3.gets(bucket, keys["alpha"]) == 1
            assert sorted(p.name for p in cache_entries.iterdir() if any(p.iterdir())) == ["alpha", "beta"]
            # gamma needs room: beta (least recently used, unloaded) leaves the disk
            assert client.call("frame", frame("gamma"))["labels"]
            on_disk = sorted(p.name for p in cache_entries.iterdir() if any(p.iterdir()))
            assert on_disk == ["alpha", "gamma"], on_disk
            assert client.call("frame", frame("beta"))["labels"]
            assert s3.gets(bucket, keys["beta"]) == 2  # evicted, so downloaded again
            assert s3.gets(bucket, keys["alpha"]) == 1
    finally:
        server.stop()
    staging = tmp_path / "cache" / "staging"  # per process: only process locks may stay
    assert not [p for p in staging.rglob("*") if p.is_file() and p.suffix != ".lock"]


def test_new_version_is_picked_up_while_a_client_streams(s3, model_files, tmp_path):
    bucket = s3.new_bucket()
    upload_model(s3, bucket, "alpha", model_files["alpha"])
    server = start_server(s3, bucket, tmp_path, MODEL_REFRESH_SECONDS=1)
    try:
        with server.client() as client:
            versions = [client.call("frame", frame("alpha", seed=i))["version"] for i in range(3)]
            upload_model(s3, bucket, "alpha", model_files["alpha-v2"])
            deadline = time.monotonic() + 60
            i = 3
            while versions[-1] == versions[0]:
                assert time.monotonic() < deadline, server.log()
                result = client.call("frame", frame("alpha", seed=i))
                assert "labels" in result, result
                versions.append(result["version"])
                i += 1
                time.sleep(0.05)
            updates = [s for s in client.drain("model_status") if s["state"] == "updated"]
            assert client.drain("error") == []
        assert len(set(versions)) == 2
        assert updates and updates[-1]["version"] == versions[-1] and updates[-1]["model"] == "alpha"
    finally:
        server.stop()


def test_store_outage_keeps_cached_models_serving(s3, model_files, tmp_path):
    bucket = s3.new_bucket()
    upload_model(s3, bucket, "alpha", model_files["alpha"])
    upload_model(s3, bucket, "beta", model_files["beta"])
    server = start_server(s3, bucket, tmp_path, DEFAULT_MODEL="alpha", MODEL_REFRESH_SECONDS=1,
                          S3_CONNECT_TIMEOUT=1, S3_READ_TIMEOUT=2, S3_MAX_ATTEMPTS=1)
    try:
        server.wait_ready()
        s3.stop()  # S3 goes away
        with server.client() as client:
            for i in range(5):
                assert client.call("frame", frame("alpha", seed=i))["labels"]
                time.sleep(0.3)  # refresh checks fail meanwhile
            error = client.call("frame", frame("beta"))
            assert error["code"] == "model_unavailable", error
            assert client.call("frame", frame("alpha"))["labels"]
        ready = requests.get(server.url + "/readyz", timeout=10)
        assert ready.status_code == 200
        assert ready.json()["store"]["reachable"] is False
    finally:
        server.stop()


def test_corrupt_upload_is_unavailable_and_never_cached(s3, model_files, tmp_path):
    bucket = s3.new_bucket()
    s3.client().put_object(Bucket=bucket, Key=f"{PREFIX}/gamma/model.keras", Body=b"PK\x03\x04 garbage")
    server = start_server(s3, bucket, tmp_path)
    try:
        with server.client() as client:
            error = client.call("frame", frame("gamma"))
            assert error["code"] == "model_unavailable"
            assert "gamma" in error["message"]
            again = client.call("frame", frame("gamma"))  # within the back-off: answered at once
            assert again["code"] == "model_unavailable"
    finally:
        server.stop()
    staging = tmp_path / "cache" / "staging"  # per process: only process locks may stay
    assert not [p for p in staging.rglob("*") if p.is_file() and p.suffix != ".lock"]


def test_flat_legacy_h5_bucket_layout(s3, model_files, tmp_path):
    """The original design's bucket: <prefix>/<name>.h5 from Keras 2, labels beside it."""
    from PIL import Image

    bucket = s3.new_bucket()
    client = s3.client()
    client.upload_file(str(model_files["legacy"]), bucket, f"{PREFIX}/legacy.h5")
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/legacy.labels.txt", Body=b"one\ntwo\nthree\n")
    server = start_server(s3, bucket, tmp_path)
    try:
        probe, expected = np.load(model_files["legacy-probe"]), np.load(model_files["legacy-expected"])
        with server.client() as sio:
            for pixels, want in zip(probe, expected):
                png = encode(Image.fromarray(pixels.astype(np.uint8)), "PNG")
                result = sio.call("frame", {"model": "legacy", "image": png, "top_k": 3})
                got = {item["label"]: item["score"] for item in result["labels"]}
                assert np.allclose([got["one"], got["two"], got["three"]], want, atol=1e-4)
        assert s3.gets(bucket, f"{PREFIX}/legacy.h5") == 1
    finally:
        server.stop()


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "webapp", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, **(env or {})})


def test_publish_then_serve(s3, model_files, tmp_path):
    bucket = s3.new_bucket()
    env = {**CREDENTIALS, "S3_ENDPOINT_URL": s3.url}
    store = f"s3://{bucket}/{PREFIX}"
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\n")  # wrong: the model has 3 outputs
    refused = run_cli("publish", str(model_files["beta"]), "--name", "delta", "--store", store,
                      "--labels", str(labels), env=env)
    assert refused.returncode != 0 and "3 outputs" in refused.stderr
    assert "Contents" not in s3.client().list_objects_v2(Bucket=bucket)

    labels.write_text("red\ngreen\nblue\n")
    published = run_cli("publish", str(model_files["beta"]), "--name", "delta", "--store", store,
                        "--labels", str(labels), "--preprocess", "unit", env=env)
    assert published.returncode == 0, published.stderr
    summary = json.loads(published.stdout)
    assert summary["labels"] == ["red", "green", "blue"]
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {f"{PREFIX}/delta/{f}" for f in ("model.keras", "labels.txt", "model.json", "model.tflite",
                                                              "manifest.json")}
    assert summary["litert"] is True

    listing = run_cli("models", "--store", store, "--json", env=env)
    assert [json.loads(line)["name"] for line in listing.stdout.splitlines()] == ["delta"]

    server = start_server(s3, bucket, tmp_path)
    try:
        details = requests.get(server.url + "/api/models/delta", timeout=60).json()
        assert details["labels"] == ["red", "green", "blue"] and details["preprocess"] == "unit"
        assert details["runtime"] == "litert"  # from the published model.tflite, no conversion
        with server.client() as client:
            result = client.call("frame", frame("delta", top_k=3))
        assert sorted(item["label"] for item in result["labels"]) == ["blue", "green", "red"]
        assert "converted to LiteRT" not in server.log()
    finally:
        server.stop()
