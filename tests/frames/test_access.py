"""Access per project: tokens, per-model grants, admin-only operations."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests
import socketio

from images import encode, shape_image
from serverproc import ROOT, Client, ServerProcess

pytestmark = pytest.mark.quick  # in `make test-fast`

TOKENS = {"token-a": ["shapes"], "token-b": ["tin*"]}
ADMIN = "admin-secret"


@pytest.fixture(scope="module")
def guarded(model_store, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("access")
    proc = ServerProcess(env={"MODEL_STORE": str(model_store), "PROJECT_TOKENS": json.dumps(TOKENS),
                              "ADMIN_TOKEN": ADMIN, "MODEL_CACHE_DIR": str(workdir)},
                         log_dir=workdir, async_mode="threading").start()
    proc.wait_ready()
    yield proc
    proc.stop()


def frame(model):
    return {"model": model, "image": encode(shape_image("circle", size=(80, 80)))}


def test_missing_or_unknown_token_is_refused_at_connect(guarded):
    for auth in (None, {"token": "nope"}, {"token": ""}):
        client = socketio.Client(reconnection=False)
        reasons = []
        client.on("connect_error", reasons.append)
        with pytest.raises(socketio.exceptions.ConnectionError):
            client.connect(guarded.url, transports=["websocket"], auth=auth)
        assert reasons and reasons[0]["message"] == "unauthorized"
    assert "nope" not in guarded.log()  # tokens are never logged


def test_a_token_reaches_only_its_models(guarded):
    with Client(guarded.url, auth={"token": "token-a"}) as a:
        assert a.call("frame", frame("shapes"))["labels"]
        refused = a.call("frame", frame("tiny"))
        assert refused["code"] == "unauthorized"
        assert [m["name"] for m in a.call("models")["models"]] == ["shapes"]
        assert a.call("monitor")["code"] == "unauthorized"
        assert a.connected
    with Client(guarded.url, auth={"token": "token-b"}) as b:  # a prefix grant
        assert b.call("frame", frame("tiny"))["labels"]
        assert {m["name"] for m in b.call("models")["models"]} == {"tiny"}
    with Client(guarded.url, auth={"token": ADMIN}) as admin:
        assert admin.call("monitor")["room"] == "monitor"
        assert admin.call("frame", frame("tiny"))["labels"]


def test_http_bearer_tokens(guarded):
    def get(path, token=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(guarded.url + path, headers=headers, timeout=30)

    assert get("/api/models").status_code == 401
    assert get("/api/models").json()["error"]["code"] == "unauthorized"
    assert [m["name"] for m in get("/api/models", "token-a").json()["models"]] == ["shapes"]
    assert get("/api/models/tiny", "token-a").status_code == 401
    image = encode(shape_image("star"))
    ok = requests.post(guarded.url + "/api/models/shapes/predict", files={"file": ("s.jpg", image)},
                       headers={"Authorization": "Bearer token-a"}, timeout=30)
    assert ok.status_code == 200
    for path in ("/metrics", "/dashboard", "/api/status"):
        assert get(path, "token-a").status_code == 401, path
        assert get(path, ADMIN).status_code == 200, path
    assert get("/healthz").status_code == 200  # probes stay open


def test_cli_passes_its_token(guarded, tmp_path):
    image = tmp_path / "c.jpg"
    image.write_bytes(encode(shape_image("circle")))
    run = lambda *extra: subprocess.run([sys.executable, "-m", "webapp", "predict", "--server", guarded.url,
                                         "--model", "shapes", *extra, str(image)],
                                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run("--token", "token-a").returncode == 0
    refused = run()
    assert refused.returncode == 2 and "unauthorized" in refused.stderr


def test_bad_project_tokens_fail_at_start_up():
    from webapp.config import load_config

    with pytest.raises(ValueError, match="PROJECT_TOKENS"):
        load_config({"PROJECT_TOKENS": "{not json"})
    with pytest.raises(ValueError, match="PROJECT_TOKENS"):
        load_config({"PROJECT_TOKENS": '{"t": "shapes"}'})
