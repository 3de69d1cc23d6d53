"""Faults: each gives its documented error or degraded mode, the server keeps
serving everything else, and nothing half-written stays in the model cache.

S3 is moto on loopback with faults injected into the responses (see
s3server.py), the full disk is a real tmpfs of a few hundred KB, Redis is a
real redis-server of the test's own that the test kills and restarts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image

import modelfactory as mf
from images import encode, noise_image, shape_image
from redisproc import RedisServer
from serverproc import ROOT, Client, ServerProcess

PREFIX = "projects"
DEMO = ROOT / "models" / "shapes"


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """A small model, a 1.5 MB one (too big for the full disk), one that raises."""
    import keras

    root = tmp_path_factory.mktemp("fault-models")
    small, big = root / "small.keras", root / "big.keras"
    mf.tiny_cnn().save(small)
    mf.slow_cnn(size=32, depth=4, filters=96).save(big)
    exploding = root / "exploding"
    mf.save_directory_model(root, "exploding", mf.exploding_cnn(), labels=["a", "b", "c"])
    assert big.stat().st_size > 1_000_000
    del keras
    return {"small": small, "big": big, "exploding": exploding}



def upload(s3, bucket, name, path):
    client = s3.client()
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{name}/labels.txt", Body=b"red\ngreen\nblue\n")
    client.upload_file(str(path), bucket, f"{PREFIX}/{name}/model.keras")
    return f"/{bucket}/{PREFIX}/{name}/model.keras"


def s3_server(s3, bucket, cache: Path, log_dir: Path, **env) -> ServerProcess:
    settings = {**s3.server_env(bucket, PREFIX), "MODEL_CACHE_DIR": str(cache), "DEFAULT_MODEL": "alpha",
                "S3_CONNECT_TIMEOUT": "1", "S3_READ_TIMEOUT": "1", "S3_MAX_ATTEMPTS": "2",
                **{k: str(v) for k, v in env.items()}}
    proc = ServerProcess(env=settings, log_dir=log_dir).start()
    proc.wait_ready()
    return proc


def frame(model, seed=0):
    return {"model": model, "image": encode(noise_image(48, 40, seed=seed))}


def cache_files(cache: Path, model: str) -> list[Path]:
    """Every file the cache holds for `model`, plus anything left in staging."""
    entries = cache / "entries" / model
    staging = cache / "staging"  # per process: staging/<process>/<download>/, staging/<process>.lock
    staged = [p for p in staging.rglob("*") if p.is_file() and p.suffix != ".lock"] if staging.exists() else []
    return staged + (list(entries.rglob("*")) if entries.exists() else [])


def stream_in_background(server, model, stop: threading.Event, answers: list):
    def run():
        with server.client() as client:
            seed = 0
            while not stop.is_set():
                answers.append(client.call("frame", frame(model, seed), timeout=30))
                seed += 1
                time.sleep(0.05)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("fault", ["stall", "reset"])
def test_s3_that_stalls_or_resets_mid_download(s3, keras_files, tmp_path, fault):
    bucket = s3.new_bucket()
    upload(s3, bucket, "alpha", keras_files["small"])
    beta = upload(s3, bucket, "beta", keras_files["small"])
    cache = tmp_path / "cache"
    server = s3_server(s3, bucket, cache, tmp_path)
    stop, others = threading.Event(), []
    streaming = stream_in_background(server, "alpha", stop, others)
    try:
        s3.faults[beta] = fault
        with server.client() as client:
            started = time.monotonic()
            error = client.call("frame", frame("beta"), timeout=120)
            assert error["code"] == "model_unavailable", error
            assert "beta" in error["message"]
            assert time.monotonic() - started < 60  # bounded timeouts and retries, no 60 s x 5
            assert cache_files(cache, "beta") == []  # nothing half-written
            assert s3.gets(bucket, f"{PREFIX}/beta/model.keras") >= 1
            # The download works again once S3 does (after the retry back-off).
            del s3.faults[beta]
            deadline = time.monotonic() + 60
            answer = error
            while "labels" not in answer and time.monotonic() < deadline:
                time.sleep(1)
                answer = client.call("frame", frame("beta"), timeout=120)
            assert "labels" in answer, answer
        assert any(p.name == "model.keras" for p in cache_files(cache, "beta"))
    finally:
        stop.set()
        streaming.join(30)
        server.stop()
    # Meanwhile the other model kept answering.
    assert len(others) > 5 and all("labels" in a for a in others), [a for a in others if "labels" not in a][:3]


@pytest.fixture
def tiny_disk(tmp_path):
    """A real filesystem of 640 KB: the model cache fills it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=640k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_in_the_cache_directory(s3, keras_files, tmp_path, tiny_disk):
    bucket = s3.new_bucket()
    upload(s3, bucket, "alpha", keras_files["small"])
    upload(s3, bucket, "big", keras_files["big"])
    cache = tiny_disk / "cache"
    server = s3_server(s3, bucket, cache, tmp_path)
    try:
        used_before = shutil.disk_usage(tiny_disk).used
        with server.client() as client:
            error = client.call("frame", frame("big"), timeout=120)
            assert error["code"] == "model_unavailable", error
            assert "No space left" in error["message"] or "stored locally" in error["message"], error
            assert cache_files(cache, "big") == []
            # The space the failed download took is given back.
            assert shutil.disk_usage(tiny_disk).used <= used_before + 64 * 1024
            assert "labels" in client.call("frame", frame("alpha"))
        assert server.proc.poll() is None
    finally:
        server.stop()


@pytest.fixture(scope="module")
def exploding_server(keras_files, tmp_path_factory):
    """Serves the demo model and a model that raises on bright images."""
    store = tmp_path_factory.mktemp("exploding-store")
    shutil.copytree(DEMO, store / "shapes")
    shutil.copytree(keras_files["exploding"], store / "exploding")
    workdir = tmp_path_factory.mktemp("exploding")
    with ServerProcess(env={"MODEL_STORE": str(store), "MODEL_CACHE_DIR": str(workdir / "cache"),
                            "MODELS_PRELOAD": "exploding"}, log_dir=workdir) as proc:
        proc.start()
        proc.wait_ready()
        yield proc


DARK = encode(Image.new("RGB", (64, 64), (0, 0, 0)), "PNG")
BRIGHT = encode(Image.new("RGB", (64, 64), (250, 250, 250)), "PNG")


def test_a_model_that_raises_fails_only_the_frames_it_raises_on(exploding_server):
    with exploding_server.client() as client:
        assert "labels" in client.call("frame", {"model": "exploding", "image": DARK})
        error = client.call("frame", {"model": "exploding", "image": BRIGHT})
        assert error["code"] == "model_unavailable" and "failed on this frame" in error["message"]
        assert "labels" in client.call("frame", {"model": "exploding", "image": DARK})
        assert "labels" in client.call("frame", {"model": "shapes", "image": encode(shape_image("star"))})
    # Frames from other clients that share a batch with the failing one still get their labels.
    results: dict[str, list] = {"dark": [], "bright": []}

    def send(kind, image):
        with exploding_server.client() as client:
            for _ in range(15):
                results[kind].append(client.call("frame", {"model": "exploding", "image": image}))

    threads = [threading.Thread(target=send, args=args) for args in (("dark", DARK), ("bright", BRIGHT))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results["dark"]) == 15 and all("labels" in r for r in results["dark"]), results["dark"]
    assert all(r.get("code") == "model_unavailable" for r in results["bright"])


def row_dropping_model():
    """A Keras model whose output has no row for bright images: a runtime that
    answers a batch with fewer rows than it was given frames."""
    import keras
    from keras import ops

    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 3))
    scores = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
    dark = ops.reshape(ops.where(ops.mean(inputs, axis=(1, 2, 3)) < 128.0), (-1,))
    return keras.Model(inputs, ops.take(scores, dark, axis=0))


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_a_runtime_that_answers_too_few_rows_is_an_error_and_the_next_frames_are_served(tmp_path, mode):
    store = tmp_path / "store"
    shutil.copytree(DEMO, store / "shapes")
    mf.save_directory_model(store, "short", row_dropping_model(), labels=["a", "b", "c"])
    # TensorFlow serves the model as it is (LiteRT runs one frame at a time).
    server = ServerProcess(mode, env={"MODEL_STORE": str(store), "MODEL_CACHE_DIR": str(tmp_path / "cache"),
                                      "RUNTIME": "tensorflow", "MODELS_PRELOAD": "short"},
                           log_dir=tmp_path).start()
    try:
        server.wait_ready()
        with server.client() as client:
            assert "labels" in client.call("frame", {"model": "short", "image": DARK}, timeout=30)
            error = client.call("frame", {"model": "short", "image": BRIGHT}, timeout=30)
            assert error["code"] == "model_unavailable" and "failed on this frame" in error["message"], error
            # The worker lived through it: the next frames are answered, not left to time out.
            for _ in range(3):
                assert "labels" in client.call("frame", {"model": "short", "image": DARK}, timeout=30)
            assert "labels" in client.call("frame", {"model": "shapes", "image": encode(shape_image("star"))})
        # Batched together with bright frames, dark frames still get their labels.
        results: dict[str, list] = {"dark": [], "bright": []}

        def send(kind, image):
            with server.client() as client:
                for _ in range(10):
                    results[kind].append(client.call("frame", {"model": "short", "image": image}, timeout=30))

        threads = [threading.Thread(target=send, args=args) for args in (("dark", DARK), ("bright", BRIGHT))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(results["dark"]) == 10 and all("labels" in r for r in results["dark"]), results["dark"]
        assert len(results["bright"]) == 10
        assert all(r.get("code") == "model_unavailable" for r in results["bright"]), results["bright"]
        details = requests.get(server.url + "/api/models/short", timeout=10).json()
        assert details["batching"]["failed_calls"] >= 11  # counted...
        assert server.log().count("Traceback") == 1  # ...and the traceback logged once
        assert server.proc.poll() is None
    finally:
        server.stop()


def connected_clients(server) -> float:
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    return float(re.search(r"^webapp_connected_clients (\S+)$", metrics, re.M).group(1))


def test_clients_that_disconnect_mid_inference(server):
    """Five clients send a frame for a ~1 s model and leave before the answer."""
    log_before, clients_before = len(server.log()), connected_clients(server)
    for seed in range(5):
        client = Client(server.url)
        client.emit("frame", {"model": "slow", "image": encode(noise_image(64, 64, seed=seed))})
        time.sleep(0.05)
        client.close()
    with server.client() as stayer:
        answer = stayer.call("frame", {"model": "slow", "image": encode(noise_image(64, 64))}, timeout=60)
        assert "labels" in answer, answer
        assert "labels" in stayer.call("frame", {"model": "shapes", "image": encode(shape_image("circle"))})
        deadline = time.monotonic() + 10
        while connected_clients(server) != clients_before + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert connected_clients(server) == clients_before + 1  # the five are gone, the stayer counted
    assert server.proc.poll() is None
    assert "Traceback" not in server.log()[log_before:]


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_redis_going_away(tmp_path, mode):
    redis_server = RedisServer(tmp_path).start()
    server = ServerProcess(async_mode=mode, env={"MESSAGE_QUEUE": redis_server.url,
                                                 "MODEL_CACHE_DIR": str(tmp_path / "cache")},
                           log_dir=tmp_path).start()
    image = encode(shape_image("circle"))
    try:
        server.wait_ready()
        with server.client() as streamer, server.client() as monitor:
            assert monitor.call("monitor")["room"] == "monitor"
            streamer.emit("frame", {"model": "shapes", "image": image, "id": "before"})
            assert streamer.next("label")["id"] == "before"
            assert monitor.next("prediction", timeout=10)["model"] == "shapes"

            redis_server.kill()
            # Degraded: frames are still answered, as events and as acks.
            for index in range(5):
                streamer.emit("frame", {"model": "shapes", "image": image, "id": index})
                assert streamer.next("label", timeout=10)["id"] == index
                assert "labels" in streamer.call("frame", {"model": "shapes", "image": image})
            assert requests.get(server.url + "/healthz", timeout=5).status_code == 200

            redis_server.start()  # same port: the server reconnects by itself
            monitor.drain("prediction")
            deadline, seen = time.monotonic() + 30, None
            while seen is None and time.monotonic() < deadline:
                streamer.call("frame", {"model": "shapes", "image": image})
                try:
                    seen = monitor.next("prediction", timeout=1)
                except Exception:
                    pass
            assert seen is not None, "monitor copies did not resume after Redis came back"
            # Model notifications resume too (their listener retries with back-off).
            deadline, reached = time.monotonic() + 45, 0
            while not reached and time.monotonic() < deadline:
                notified = subprocess.run([sys.executable, "-m", "webapp", "notify", "--queue", redis_server.url,
                                           "--model", "shapes"], cwd=ROOT, capture_output=True, text=True,
                                          timeout=60)
                assert notified.returncode == 0, notified.stderr
                reached = json.loads(notified.stdout)["processes_notified"]
                time.sleep(0 if reached else 2)
            assert reached == 1
        assert server.proc.poll() is None
    finally:
        server.stop()
        redis_server.kill()
    assert "revalidating model shapes" in server.log()


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_listings_asked_for_while_s3_stalls_are_bounded(s3, keras_files, tmp_path, mode):
    """While S3 stalls, each model listing waits for its timeouts. At most
    `LISTINGS_AT_ONCE` run at once: past that a `models` ask is answered
    `overloaded` at once, instead of holding a thread (or green thread) of its
    own until S3 gives up; those let through end with `model_unavailable`, the
    connection stays usable, and frames are answered meanwhile."""
    from webapp.frames.service import LISTINGS_AT_ONCE

    bucket = s3.new_bucket()
    upload(s3, bucket, "alpha", keras_files["small"])
    settings = {**s3.server_env(bucket, PREFIX), "MODEL_CACHE_DIR": str(tmp_path / "cache"),
                "DEFAULT_MODEL": "alpha", "MODEL_LIST_TTL": "0",
                "S3_CONNECT_TIMEOUT": "1", "S3_READ_TIMEOUT": "3", "S3_MAX_ATTEMPTS": "1"}
    with ServerProcess(mode, env=settings, log_dir=tmp_path) as server:
        server.start()
        server.wait_ready()
        s3.faults[f"/{bucket}"] = "stall"  # every listing of the bucket: half an answer, then nothing
        with server.client() as client:
            asks = LISTINGS_AT_ONCE + 30
            for _ in range(asks):
                client.emit("models")
            # Listings do not take the frames' places: the loaded model answers meanwhile.
            with server.client() as other:
                assert "labels" in other.call("frame", frame("alpha"), timeout=30)
            codes = [client.next("error", timeout=60)["code"] for _ in range(asks)]
            # The ones over the bound were answered before any stalled listing gave up.
            assert codes[:30] == ["overloaded"] * 30, codes
            assert codes[30:] == ["model_unavailable"] * LISTINGS_AT_ONCE, codes
            del s3.faults[f"/{bucket}"]
            assert "alpha" in {m["name"] for m in client.call("models", timeout=60)["models"]}
