"""Memory per model (`memory_bytes` in GET /api/models/<name>, what the memory
bound adds up) does not blur when models load in parallel, as the warm set
does at start-up: each model's figure is what it is when loaded alone, and
their sum is what the process actually grew by (read from /proc).

LiteRT memory is measured as the process's growth while a model is built;
measured in parallel, each load counted the others' memory too (4 models:
142-157 MB reported in all for 54 MB of real growth).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

import modelfactory as mf
from images import encode, noise_image
from serverproc import ROOT, ServerProcess, rss_bytes

MODELS = ("wide", "narrow", "convs")


def dense_model(units: int):
    keras = mf._keras()
    inputs = keras.Input((32, 32, 3))
    hidden = keras.layers.Dense(units, activation="relu")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Models of different kinds and sizes (~10 MB dense, ~2 MB dense, a CNN
    whose arenas dominate), each with its LiteRT file (no conversion), and
    `first`, loaded at start-up so LiteRT's one-time costs are paid before measuring."""
    root = tmp_path_factory.mktemp("memory-store")
    built = {"wide": dense_model(800), "narrow": dense_model(160),
             "convs": mf.slow_cnn(size=64, depth=4, filters=96), "first": mf.tiny_cnn()}
    for name, model in built.items():
        folder = root / name
        folder.mkdir()
        model.save(folder / "model.keras")
        subprocess.run([sys.executable, "-m", "webapp.models.runtime.convert", str(folder / "model.keras"),
                        str(folder / "model.tflite")], cwd=ROOT, check=True, capture_output=True, timeout=300)
        outputs = model.outputs[0].shape[-1]
        (folder / "labels.txt").write_text("".join(f"c{i}\n" for i in range(outputs)))
    return root


def load(server: ServerProcess, name: str, ready: threading.Barrier | None = None) -> None:
    """Load `name` with one frame (after `ready`, once every client is connected)."""
    with server.client() as client:
        if ready is not None:
            ready.wait()
        answer = client.call("frame", {"model": name, "image": encode(noise_image(32, 32, seed=1))}, timeout=120)
    assert "labels" in answer, answer


def memory_of(server: ServerProcess, name: str) -> int:
    details = requests.get(f"{server.url}/api/models/{name}", timeout=30).json()
    assert details["runtime"] == "litert", details
    return details["memory_bytes"]


def start(store: Path, tmp_path: Path, mode: str, label: str) -> ServerProcess:
    log_dir = tmp_path / label
    log_dir.mkdir()
    # One interpreter per model: a second is only built when calls overlap
    # (frames/test_batching_limits.py), and `memory_bytes` counts it ahead.
    server = ServerProcess(mode, env={"MODEL_STORE": str(store), "DEFAULT_MODEL": "first", "LITERT_INTERPRETERS": "1",
                                      "MODEL_CACHE_DIR": str(log_dir / "cache")}, log_dir=log_dir).start()
    server.wait_ready()
    return server


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_models_loaded_in_parallel_report_the_memory_they_report_alone(store, tmp_path, mode):
    server = start(store, tmp_path, mode, "alone")
    try:
        for name in MODELS:  # one after the other
            load(server, name)
        alone = {name: memory_of(server, name) for name in MODELS}
    finally:
        server.stop()

    server = start(store, tmp_path, mode, "parallel")
    try:
        pid = server.serving_pid
        before = rss_bytes(pid)
        barrier = threading.Barrier(len(MODELS))
        errors = []

        def load_together(name):
            try:  # all three frames at once: three loads in parallel
                load(server, name, ready=barrier)
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        threads = [threading.Thread(target=load_together, args=(name,)) for name in MODELS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        assert not errors, errors
        growth = rss_bytes(pid) - before
        parallel = {name: memory_of(server, name) for name in MODELS}
    finally:
        server.stop()

    mb = {name: (round(alone[name] / 1e6, 1), round(parallel[name] / 1e6, 1)) for name in MODELS}
    print(f"{mode}: MB alone, in parallel: {mb}; sum {sum(parallel.values()) / 1e6:.1f} MB, "
          f"RSS growth {growth / 1e6:.1f} MB")
    # A few MB of blur remain, cause not pinned down (the 12.1 MB CNN measured
    # 8.0-11.2 MB over nine parallel runs; the dense models within 1.1 MB);
    # counting each other's loads, the CNN measured 38-47 MB before the fix.
    for name in MODELS:
        assert abs(parallel[name] - alone[name]) <= max(5e6, 0.25 * alone[name]), mb
    # What the memory bound adds up is what the process holds (the frames and
    # threads of the first calls ride on top).
    # (Measured: 44.5-47.5 MB in all for 50.4-51.0 MB of growth; 74-83 MB before the fix.)
    assert abs(sum(parallel.values()) - growth) <= max(10e6, 0.2 * growth), (mb, growth)
