"""Tokens are never logged, whatever a client does with them.

The server runs at `LOG_LEVEL=DEBUG` (the most it ever writes) with project
and admin tokens, and every way a token reaches it is used, right and wrong:
Socket.IO `auth` over WebSocket and long-polling, `Authorization: Bearer`,
`?token=` on the pages, a token for a model it does not cover, a malformed
CONNECT packet carrying one, and the monitor room. Then the whole log (the
server's stdout and stderr, including gunicorn's in threading mode) must not
contain any of them, nor a recognisable part of one.
"""

from __future__ import annotations

import json

import pytest
import requests
import socketio
import websocket

from conftest import ASYNC_MODES
from images import encode, shape_image
from serverproc import Client, ServerProcess

PROJECT = "proj-token-7f3a9c"
ADMIN = "admin-token-5be21d"
WRONG = "wrong-token-c04e88"
MALFORMED = "malformed-token-91d2"
SECRETS = (PROJECT, ADMIN, WRONG, MALFORMED)


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_no_token_ever_reaches_the_log(mode, model_store, tmp_path):
    image = encode(shape_image("circle", seed=3))
    env = {"MODEL_STORE": str(model_store), "DEFAULT_MODEL": "shapes", "LOG_LEVEL": "DEBUG",
           "PROJECT_TOKENS": json.dumps({PROJECT: ["shapes"]}), "ADMIN_TOKEN": ADMIN,
           "MODEL_CACHE_DIR": str(tmp_path / "cache")}
    with ServerProcess(async_mode=mode, env=env, log_dir=tmp_path) as server:
        server.start()
        server.wait_ready()
        outcomes = {}
        for transports in (["websocket"], ["polling"]):
            with Client(server.url, transports=transports, auth={"token": PROJECT}) as user:
                outcomes[f"label-{transports[0]}"] = "labels" in user.call("frame", {"model": "shapes", "image": image})
                outcomes["other-model"] = user.call("frame", {"model": "tiny", "image": image})["code"]
            refused = socketio.Client(reconnection=False)
            reasons = []
            refused.on("connect_error", reasons.append)
            with pytest.raises(socketio.exceptions.ConnectionError):
                refused.connect(server.url, transports=transports, auth={"token": WRONG}, wait_timeout=10)
            outcomes[f"refused-{transports[0]}"] = [r.get("message") for r in reasons] == ["unauthorized"]
        with Client(server.url, auth={"token": ADMIN}) as operator:
            outcomes["monitor-status"] = operator.call("monitor")["room"] == "monitor"
            operator.next("status", timeout=30)
        for token in (PROJECT, ADMIN, WRONG):
            headers = {"Authorization": f"Bearer {token}"}
            requests.get(server.url + "/api/models", headers=headers, timeout=30)
            requests.get(server.url + "/metrics", headers=headers, timeout=30)
            requests.post(server.url + "/api/models/shapes/predict", headers=headers,
                          files={"file": ("c.jpg", image, "image/jpeg")}, timeout=30)
            for page in ("/", "/capture", "/dashboard"):
                requests.get(f"{server.url}{page}?token={token}", timeout=30)
        # A CONNECT packet that does not parse, with a token in it.
        raw = websocket.create_connection(server.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket",
                                          timeout=20)
        try:
            assert raw.recv().startswith("0")
            raw.send('40{"token": "' + MALFORMED + '", ')
            raw.send("40" + json.dumps({"token": MALFORMED, "extra": [1, 2, 3]}))
        finally:
            raw.close()
        # The server is still well: a last frame gets its label.
        with Client(server.url, auth={"token": PROJECT}) as user:
            assert "labels" in user.call("frame", {"model": "shapes", "image": image})
    assert outcomes == {"label-websocket": True, "label-polling": True, "other-model": "unauthorized",
                        "refused-websocket": True, "refused-polling": True, "monitor-status": True}, outcomes
    log = server.log()
    assert "refused a client: missing or unknown token" in log  # the refusals were logged...
    for secret in SECRETS:  # ... without the token, or a recognisable part of one
        for part in {secret, secret[-6:], secret.split("-")[0] + "-token"}:
            assert part not in log, f"{part!r} found in the log:\n" + "\n".join(
                line for line in log.splitlines() if part in line)[:2000]
