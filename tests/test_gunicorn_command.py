"""The README's gunicorn command serves the app as `ASYNC_MODE=threading python -m webapp serve` does:
`gunicorn -k gthread -w 1 --threads 100 'webapp:create_app()'`, run exactly so, answers over
Socket.IO (WebSocket) and HTTP."""

from __future__ import annotations

import sys

import requests

from images import encode, shape_image
from serverproc import ServerProcess


def test_the_documented_gunicorn_command_serves(model_store, tmp_path):
    server = ServerProcess(async_mode="threading", log_dir=tmp_path,
                           env={"MODEL_STORE": str(model_store), "DEFAULT_MODEL": "shapes",
                                "MODEL_CACHE_DIR": str(tmp_path / "cache")})
    server.command = [sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", "1", "--threads", "100",
                      "-b", f"127.0.0.1:{server.port}", "webapp:create_app()"]
    with server:
        server.start()
        server.wait_ready()
        with server.client() as client:
            answer = client.call("frame", {"model": "shapes", "image": encode(shape_image("square", seed=4))})
        assert answer["labels"][0]["label"] == "square", answer
        upload = requests.post(server.url + "/api/models/shapes/predict",
                               files={"file": ("t.png", encode(shape_image("triangle", seed=4), "PNG"), "image/png")},
                               timeout=60).json()
        assert upload["labels"][0]["label"] == "triangle", upload
        assert "gunicorn" in server.log().lower()
