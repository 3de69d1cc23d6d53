"""Shared fixtures.

* `app`, `client`: an in-process app (Flask test client) for fast checks.
* `model_store`: a model store directory with the demo model and test models
  built in code (a slow one, a legacy Keras 2 .h5 in the flat layout, ...).
* `server`: the real server, started as `python -m webapp serve` in a
  subprocess on a free port, once per async mode; tests drive it with the
  real python-socketio client and real HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings

from redisproc import RedisServer
from serverproc import OwnedProcess, ServerProcess

# Fuzzing is reproducible: the same inputs on every run and in CI (no example
# database carried between runs). HYPOTHESIS_PROFILE=explore for new inputs.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", max_examples=5000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL = ROOT / "models" / "shapes"
ASYNC_MODES = ("eventlet", "threading")


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    """A store holding the demo model and the test models (built once)."""
    import modelfactory as mf

    root = tmp_path_factory.mktemp("store")
    shutil.copytree(DEMO_MODEL, root / "shapes")  # as shipped: served from its int8 file
    # The demo's float files alone, for promises about float serving (parity with Keras).
    shutil.copytree(DEMO_MODEL, root / "shapes-float", ignore=shutil.ignore_patterns("model.int8.tflite"))
    meta = json.loads((root / "shapes-float" / "model.json").read_text())
    meta.pop("int8", None)
    (root / "shapes-float" / "model.json").write_text(json.dumps(meta))
    mf.save_directory_model(root, "tiny", mf.tiny_cnn(), labels=["red", "green", "blue"])
    # Used by one test only, so its first load is observed from the start.
    mf.save_directory_model(root, "status-probe", mf.tiny_cnn(), labels=["red", "green", "blue"])
    mf.save_directory_model(root, "logits", mf.tiny_cnn(activation=None), labels=["a", "b", "c"],
                            labels_format="json", meta={"output": "logits", "preprocess": "unit"})
    mf.save_directory_model(root, "binary", mf.tiny_cnn(units=1, activation="sigmoid"),
                            labels=["cat", "dog"], meta={"output": "sigmoid"})
    mf.save_directory_model(root, "grey", mf.tiny_cnn(input_shape=(20, 30, 1)), labels=["x", "y", "z"],
                            meta={"preprocess": "symmetric"})
    mf.save_directory_model(root, "slow", mf.slow_cnn(), labels=["left", "right"])
    # As `publish` does, each model's LiteRT conversion is stored beside it, so
    # every server on this store (one per async mode, and others) loads it
    # instead of converting it again: a TensorFlow import and a probe batch per
    # model and server. `status-probe` is left for the server to convert: one
    # test watches its first load, conversion included.
    from webapp.models.runtime.convert import convert

    for name, preprocess in (("tiny", "raw"), ("logits", "unit"), ("binary", "raw"), ("grey", "symmetric"),
                             ("slow", "raw")):
        report = convert(root / name / "model.keras", root / name / "model.tflite", preprocess)
        assert report["ok"], report
    mf.save_legacy_keras2_h5(root / "legacy.h5")
    (root / "legacy.labels.txt").write_text("one\ntwo\nthree\n")
    (root / "broken").mkdir()
    (root / "broken" / "model.keras").write_bytes(b"this is not a keras file")
    return root


@pytest.fixture(scope="session", params=ASYNC_MODES)
def server(request, model_store, tmp_path_factory):
    """The real server in each async mode, serving `model_store`."""
    workdir = tmp_path_factory.mktemp(f"server-{request.param}")
    with ServerProcess(
        async_mode=request.param,
        env={"MODEL_STORE": str(model_store), "DEFAULT_MODEL": "shapes",
             "MODEL_CACHE_DIR": str(workdir / "cache")},
        log_dir=workdir,
    ) as proc:
        proc.start()
        proc.wait_ready()
        yield proc


@pytest.fixture(scope="session")
def cnn_with_conversion(tmp_path_factory) -> Path:
    """A ~1 MB convolutional model and its LiteRT conversion beside it, as
    `publish` uploads them (for tests that swap, cache or download versions)."""
    import subprocess
    import sys

    import modelfactory as mf

    folder = tmp_path_factory.mktemp("cnn-model")
    mf.slow_cnn(size=32, depth=4, filters=96).save(folder / "model.keras")
    subprocess.run([sys.executable, "-m", "webapp.models.runtime.convert", str(folder / "model.keras"),
                    str(folder / "model.tflite")], cwd=ROOT, check=True, capture_output=True, timeout=300)
    return folder


@pytest.fixture
def s3(request):
    """moto's S3 server of the test's own, counting the requests it receives.

    A test module that needs a misbehaving store names its subclass of
    `CountingS3Server` in a module-level `S3_SERVER`."""
    from s3server import CountingS3Server

    server = getattr(request.module, "S3_SERVER", CountingS3Server)().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A redis-server of the suite's own on a free port (never the machine's)."""
    with RedisServer(tmp_path_factory.mktemp("redis")).start() as redis_server:
        yield redis_server.url


@pytest.fixture
def app(tmp_path):
    """An app on an empty store, nothing started in the background."""
    from webapp import create_app

    store = tmp_path / "store"
    store.mkdir()
    return create_app({"MODEL_STORE": str(store), "ASYNC_MODE": "threading",
                       "MODEL_CACHE_DIR": str(tmp_path / "cache"), "START_BACKGROUND": False})


@pytest.fixture
def client(app):
    return app.test_client()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if a server or redis-server the tests started is still alive."""
    leaked = [owned for owned in list(OwnedProcess.live) if owned.group_alive()]
    for owned in list(OwnedProcess.live):
        owned.kill_group()
    if leaked:
        names = ", ".join(f"{type(p).__name__} pid {p.proc.pid}" for p in leaked)
        session.config.get_terminal_writer().line(f"\nLEAKED processes, killed at session end: {names}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
