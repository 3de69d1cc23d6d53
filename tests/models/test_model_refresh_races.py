"""A version check racing an unload: the unloaded model stays unloaded, and a
load of the same model running meanwhile keeps its files protected.

Unit level, with the real registry, a real directory store and real LiteRT
runtimes. The race is made to happen, not hoped for: the store's `fetch`
holds each call of a chosen model at a gate until the test opens it, so the
version check is stopped mid-download while the test unloads the model and
starts a load of it.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import modelfactory as mf
from serverproc import ROOT


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> Path:
    """A small model with its LiteRT conversion, so loads never convert."""
    folder = tmp_path_factory.mktemp("race-model")
    mf.tiny_cnn().save(folder / "model.keras")
    subprocess.run([sys.executable, "-m", "webapp.models.runtime.convert", str(folder / "model.keras"),
                    str(folder / "model.tflite")], cwd=ROOT, check=True, capture_output=True, timeout=300)
    return folder


def put_model(store: Path, name: str, files: Path, labels: str) -> None:
    folder = store / name
    folder.mkdir(parents=True, exist_ok=True)
    for filename in ("model.keras", "model.tflite"):
        shutil.copyfile(files / filename, folder / filename)
    write_labels(store, name, labels)


def write_labels(store: Path, name: str, labels: str) -> None:
    temporary = store / name / ".labels.tmp"
    temporary.write_text(labels)
    os.replace(temporary, store / name / "labels.txt")  # a new version of the set


def gated_store(root: Path):
    from webapp.models.store import LocalStore

    class GatedStore(LocalStore):
        """A directory store whose fetches of `gated` models wait at a gate:
        each call puts (stored model, gate) on `arrivals` and waits for the gate."""

        def __init__(self, root):
            super().__init__(root)
            self.gated: set[str] = set()
            self.arrivals: queue.Queue = queue.Queue()

        def fetch(self, stored, progress=None, protected=frozenset):
            if stored.name in self.gated:
                gate = threading.Event()
                self.arrivals.put((stored, gate))
                assert gate.wait(60), "the test never opened the gate"
            return super().fetch(stored, progress, protected)

    return GatedStore(root)


@pytest.fixture
def registry_on(tmp_path, model_files):
    """A registry keeping one model loaded at a time, over a gated store with alpha and beta."""
    from webapp.frames.batching import batcher_factory
    from webapp.server.async_mode import ThreadingConcurrency
    from webapp.config import load_config
    from webapp.models.registry import ModelRegistry

    root = tmp_path / "store"
    put_model(root, "alpha", model_files, "a\nb\nc\n")
    put_model(root, "beta", model_files, "x\ny\nz\n")
    settings = load_config({"MODEL_STORE": str(root), "ASYNC_MODE": "threading", "DEFAULT_MODEL": "",
                            "MAX_LOADED_MODELS": 1, "MODEL_CACHE_DIR": str(tmp_path / "cache")})
    store = gated_store(root)
    concurrency = ThreadingConcurrency()
    return root, store, ModelRegistry(store, concurrency, settings, make_batcher=batcher_factory(concurrency, 8))


def wait_until(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def check_a_new_version_of_alpha(registry_on, caplog):
    """alpha serving, a new version of it in the store, and a version check
    downloading it, held at the store's gate: (the new version, the gate)."""
    root, store, registry = registry_on
    caplog.set_level(logging.INFO, logger="webapp.models.registry")
    registry.acquire("alpha")
    write_labels(root, "alpha", "d\ne\nf\n")
    store.gated.add("alpha")
    registry.revalidate("alpha")
    return store.arrivals.get(timeout=30)


def test_a_version_check_finishing_after_an_unload_does_not_bring_the_model_back(registry_on, caplog):
    root, store, registry = registry_on
    new_version, gate = check_a_new_version_of_alpha(registry_on, caplog)
    registry.acquire("beta")  # one model at a time: alpha is unloaded
    assert registry.loaded("alpha") is None
    gate.set()
    entry = registry._entries["alpha"]
    wait_until(lambda: not entry.updating, "the version check to end")
    # alpha stays unloaded; beta, the model in use, is not pushed out by it.
    assert registry.loaded("alpha") is None
    assert registry.loaded("beta") is not None
    assert set(registry.loaded_models()) == {"beta"}
    # The version built for nothing let go of its runtime.
    wait_until(lambda: f"model alpha version {new_version.version} released" in caplog.text,
               "the unused version's release")


def test_a_version_check_does_not_clear_the_key_of_a_load_running_meanwhile(registry_on, caplog):
    root, store, registry = registry_on
    new_version, check_gate = check_a_new_version_of_alpha(registry_on, caplog)
    registry.acquire("beta")  # alpha unloaded while its version check downloads
    loaded = {}
    loader = threading.Thread(target=lambda: loaded.setdefault("alpha", registry.acquire("alpha")), daemon=True)
    loader.start()  # a client asks for alpha again: a load of the same version
    same_version, load_gate = store.arrivals.get(timeout=30)
    assert same_version.fingerprint == new_version.fingerprint
    key = f"alpha/{new_version.fingerprint}"
    check_gate.set()
    entry = registry._entries["alpha"]
    wait_until(lambda: not entry.updating, "the version check to end")
    # The load is still running: its version's files must stay protected from eviction.
    assert key in registry.protected_cache_keys()
    load_gate.set()
    loader.join(60)
    assert loaded["alpha"].spec.labels == ("d", "e", "f")
    # The one loaded alpha is the load's; the check's own build was released, not leaked.
    assert registry.loaded("alpha") is loaded["alpha"]
    wait_until(lambda: f"model alpha version {new_version.version} released" in caplog.text,
               "the version check's build to be released")
