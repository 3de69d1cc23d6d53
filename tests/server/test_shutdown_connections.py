"""SIGTERM: while the server drains, new connections are refused (and closed at
once), the frame in flight is still answered, then the process exits 0.

The frame is kept in flight for certain by holding its model call
(callsignals.py), not by guessing how long a model takes.
(Frames in flight and new frames after SIGTERM: tests/server/test_scale_out.py.)
"""

from __future__ import annotations

import json
import queue
import signal
import time

import pytest
import requests
import websocket

from callsignals import SignallingServer
from conftest import ASYNC_MODES
from images import encode, shape_image


def connect_over_websocket(url: str) -> dict:
    ws = websocket.create_connection(url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket", timeout=10)
    try:
        assert ws.recv().startswith("0")  # Engine.IO open
        ws.send("40")
        answer = ws.recv()
        try:  # then the server closes the session: a close frame, or the socket ends
            rest = ws.recv()
            closed = rest in ("", "1") or rest is None
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            closed = True
        return {"code": answer[:2], "data": json.loads(answer[2:]), "closed": closed}
    finally:
        ws.close()


def connect_over_polling(url: str) -> dict:
    base = url + "/socket.io/?EIO=4&transport=polling"
    opened = requests.get(base, timeout=10).text
    sid = json.loads(opened[opened.index("{"):])["sid"]
    assert requests.post(f"{base}&sid={sid}", data="40", timeout=10).status_code == 200
    answer = requests.get(f"{base}&sid={sid}", timeout=10).text
    after = requests.get(f"{base}&sid={sid}", timeout=10)  # the session is gone (or closing)
    closed = after.status_code == 400 or after.text.startswith("1")
    return {"code": answer[:2], "data": json.loads(answer[2:].split("\x1e")[0]), "closed": closed}


@pytest.mark.parametrize("mode", ASYNC_MODES)
def test_new_connections_are_refused_while_the_server_drains(mode, model_store, tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    with SignallingServer(calls, async_mode=mode, log_dir=tmp_path,
                          env={"MODEL_STORE": str(model_store), "DEFAULT_MODEL": "shapes",
                               "MODEL_CACHE_DIR": str(tmp_path / "cache")}) as server:
        server.start()
        server.wait_ready()
        image = encode(shape_image("circle", seed=9))
        with server.client() as user:
            user.call("frame", {"model": "shapes", "image": image})
            before = len(server.started_calls("shapes"))
            server.hold("shapes")
            try:
                user.emit("frame", {"model": "shapes", "image": image, "id": "in flight"})
                server.wait_for_calls("shapes", before + 1)
                server.signal(signal.SIGTERM)
                # Threading mode: gunicorn's master passes the signal on to its worker; wait
                # for the serving process to say it drains (an event in its log, not a sleep).
                deadline = time.monotonic() + 30
                while "SIGTERM: refusing new connections" not in server.log():
                    assert time.monotonic() < deadline, server.log()[-3000:]
                    time.sleep(0.02)
                # Spoken by hand with timeouts (python-socketio's client can take 30 s to give
                # up after a refusal): the server's own answer is what counts here.
                outcomes = [connect_over_websocket(server.url), connect_over_polling(server.url)]
            finally:
                server.release("shapes")
            try:
                label = user.next("label", timeout=60)
            except queue.Empty:
                raise AssertionError(f"the frame in flight was never answered: {outcomes}\n{server.log()[-4000:]}")
        code = server.proc.wait(30)
    for outcome in outcomes:  # a connect_error saying why, and the session ended by the server
        assert outcome["code"] == "44" and outcome["data"]["message"] == "shutting_down", outcomes
        assert outcome["closed"], outcomes
    assert label["id"] == "in flight" and label["labels"][0]["label"] == "circle", label
    assert code == 0, server.log()[-3000:]
