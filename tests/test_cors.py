"""Several front ends: cross-origin Socket.IO and HTTP, allowed and refused."""

from __future__ import annotations

import pytest
import requests
import socketio

from serverproc import ServerProcess

ALLOWED = "http://projects.example:8000"
OTHER = "http://elsewhere.example:9000"


@pytest.fixture(scope="module")
def cors_server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cors")
    proc = ServerProcess(env={"CORS_ORIGINS": f"{ALLOWED},http://second.example", "MODEL_CACHE_DIR": str(workdir)},
                         log_dir=workdir, async_mode="threading").start()
    yield proc
    proc.stop()


def test_socketio_from_an_allowed_origin_connects(cors_server):
    client = socketio.Client(reconnection=False)
    client.connect(cors_server.url, headers={"Origin": ALLOWED}, transports=["polling"])
    assert client.connected
    assert client.call("models", timeout=30)["models"]
    client.disconnect()


def test_socketio_from_another_origin_is_refused(cors_server):
    client = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(cors_server.url, headers={"Origin": OTHER}, transports=["polling"])
    assert not client.connected


def test_http_api_cors_headers(cors_server):
    allowed = requests.get(cors_server.url + "/api/models", headers={"Origin": ALLOWED}, timeout=10)
    assert allowed.headers.get("Access-Control-Allow-Origin") == ALLOWED
    refused = requests.get(cors_server.url + "/api/models", headers={"Origin": OTHER}, timeout=10)
    assert "Access-Control-Allow-Origin" not in refused.headers
    preflight = requests.options(cors_server.url + "/api/models/shapes/predict", timeout=10, headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert preflight.headers.get("Access-Control-Allow-Origin") == ALLOWED
    assert "POST" in preflight.headers.get("Access-Control-Allow-Methods", "")


def test_default_is_same_origin_only(server):
    client = socketio.Client(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(server.url, headers={"Origin": OTHER}, transports=["polling"])
    same = socketio.Client(reconnection=False)
    same.connect(server.url, headers={"Origin": server.url}, transports=["polling"])
    assert same.connected
    same.disconnect()


def test_wildcard_with_credentials_is_refused():
    from webapp.config import load_config

    with pytest.raises(ValueError, match="CORS_ORIGINS"):
        load_config({"CORS_ORIGINS": ["*"], "CORS_CREDENTIALS": True})
