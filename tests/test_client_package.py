"""The Python client package (clients/python), installed alone, against the real server.

A fresh virtualenv gets `pip install ./clients/python` (versions constrained by
requirements/base.txt, the server's lock) and nothing else: no Flask, no
TensorFlow, no eventlet. A script run by that venv's Python then uses the
package against the real server with every input type, error answers and a
stream; PIL and numpy input once the optional `[images]` extra is installed.
Reconnection and the latest-frame-wins slot are checked from the test process
(the same package, installed editable by `make`).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from images import encode, shape_image
from serverproc import ROOT, ServerProcess

TOKEN = "project-a-token"
LOCK = ROOT / "requirements" / "base.txt"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.lower())


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalise(name)] = version.strip()
    return pins


def pip(python: Path, *args, timeout=600):
    done = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "install", "-q",
                           "-c", str(LOCK), *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> SimpleNamespace:
    """A fresh venv with only the client package: its `python`, and the package `source` it came from."""
    root = tmp_path_factory.mktemp("client-venv")
    # Installed from a copy: pip builds in the source tree, which must stay clean.
    source = shutil.copytree(ROOT / "clients" / "python", root / "source",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    pip(python, str(source))
    return SimpleNamespace(python=python, source=source)


@pytest.fixture(scope="module", params=["eventlet", "threading"])
def token_server(request, model_store, tmp_path_factory):
    """The real server with project tokens, and a model nobody has loaded yet ("late")."""
    workdir = tmp_path_factory.mktemp(f"client-{request.param}")
    store = workdir / "store"
    shutil.copytree(model_store / "shapes", store / "shapes")
    shutil.copytree(model_store / "tiny", store / "late")
    proc = ServerProcess(async_mode=request.param, log_dir=workdir, env={
        "MODEL_STORE": str(store), "DEFAULT_MODEL": "shapes", "MODEL_CACHE_DIR": str(workdir / "cache"),
        "PROJECT_TOKENS": json.dumps({TOKEN: ["shapes", "late", "no-such-*"]})}).start()
    proc.wait_ready()
    yield proc
    proc.stop()


def installed(python: Path) -> dict[str, str]:
    done = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "list", "--format=json"],
                          capture_output=True, text=True, timeout=120, check=True)
    return {normalise(p["name"]): p["version"] for p in json.loads(done.stdout)}


def importable(python: Path, modules) -> dict[str, bool]:
    probe = ("import importlib.util, json, sys; "
             "print(json.dumps({m: importlib.util.find_spec(m) is not None for m in sys.argv[1:]}))")
    done = subprocess.run([str(python), "-c", probe, *modules], capture_output=True, text=True, timeout=60,
                          check=True)
    return json.loads(done.stdout)


def test_installs_alone_with_only_the_socketio_client(client_venv):
    packages = installed(client_venv.python)
    assert "webapp-client" in packages and "python-socketio" in packages and "websocket-client" in packages
    # Everything it pulled in is in the server's lock at the same version, so
    # `make run` (the lock, then this package with --no-deps) has all it needs.
    pins = lock_pins()
    extra = {name: version for name, version in packages.items()
             if name not in ("webapp-client", "pip", "setuptools") and pins.get(name) != version}
    assert extra == {}
    found = importable(client_venv.python, ["webapp_client", "socketio", "websocket", "requests",
                                     "flask", "tensorflow", "keras", "eventlet", "PIL", "numpy"])
    assert found == {"webapp_client": True, "socketio": True, "websocket": True, "requests": True,
                     "flask": False, "tensorflow": False, "keras": False, "eventlet": False,
                     "PIL": False, "numpy": False}


#: Run by the fresh venv's python: argv = server URL, token, work dir, "plain" | "images".
#: Prints one JSON object describing what happened.
CLIENT_SCRIPT = r'''
import json, sys, threading
from pathlib import Path
import webapp_client
from webapp_client import Client, ConnectError, PredictionError

url, token, work, mode = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4]
out = {}
if mode == "plain":  # as if the optional PIL and numpy were not installed, whatever ran before
    class WithoutImages:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in ("PIL", "numpy"):
                raise ModuleNotFoundError(name, name=name)
    sys.meta_path.insert(0, WithoutImages())
try:
    Client(url, timeout=20)
except ConnectError as exc:
    out["no_token"] = exc.reason
statuses = []
with Client(url, token=token, timeout=120) as client:
    client.on_model_status(statuses.append)
    out["models"] = sorted(m["name"] for m in client.models())
    top = lambda answer: answer["labels"][0]["label"]
    if mode == "plain":
        out["str_path"] = top(client.predict(str(work / "circle.png"), model="shapes"))
        out["path"] = top(client.predict(work / "star.png", model="shapes"))
        out["bytes"] = top(client.predict((work / "square.jpg").read_bytes(), model="shapes", top_k=2))
        import base64
        data_url = "data:image/png;base64," + base64.b64encode((work / "circle.png").read_bytes()).decode()
        out["data_url"] = top(client.predict(data_url, model="shapes"))
        answer = client.predict(work / "star.png", model="shapes", top_k=2, frame_id="mine")
        out["shape"] = {"id": answer["id"], "labels": len(answer["labels"]), "has_hint": "interval_ms" in answer["hint"]}
        for name, call in [("unknown_model", lambda: client.predict(work / "star.png", model="no-such-model")),
                           ("bad_image", lambda: client.predict(b"not a picture", model="shapes")),
                           ("unauthorized", lambda: client.predict(work / "star.png", model="tiny")),
                           ("bad_top_k", lambda: client.predict(work / "star.png", model="shapes", top_k=0))]:
            try:
                call()
                out[name] = "no error"
            except PredictionError as exc:
                out[name] = {"code": exc.code, "message": bool(exc.message), "id_is_int": isinstance(exc.id, int)}
        out["images_imported"] = sorted(m for m in ("PIL", "numpy") if m in sys.modules)
        frames = [(work / n).read_bytes() for n in ("circle.png", "star.png", "square.jpg")]
        frames.insert(1, b"junk")
        stream = client.stream(frames, model="shapes", fps=50)
        answers = list(stream)
        out["stream"] = [a.code if isinstance(a, PredictionError) else top(a) for a in answers]
        out["stream_ids"] = [a.id if isinstance(a, PredictionError) else a["id"] for a in answers]
        out["stream_interval_ok"] = stream.interval_s >= 0.02 and stream.interval_s == max(
            0.02, answers[-1]["hint"]["interval_ms"] / 1000)
        out["late"] = sorted(client.predict(work / "circle.png", model="late")["labels"][0])
        out["statuses"] = [s["state"] for s in statuses if s.get("model") == "late"]
    else:
        from PIL import Image
        import numpy as np
        pil = Image.open(work / "circle.png")
        out["pil"] = top(client.predict(pil, model="shapes"))
        out["pil_rgba"] = top(client.predict(pil.convert("RGBA"), model="shapes"))
        array = np.asarray(Image.open(work / "star.png").convert("RGB"))
        out["numpy"] = top(client.predict(array, model="shapes"))
        for name, bad in [("grey", array[:, :, 0]), ("float", array.astype("float32")), ("empty", array[:0])]:
            try:
                client.predict(bad, model="shapes")
                out["numpy_" + name] = "accepted"
            except ValueError as exc:
                out["numpy_" + name] = "ValueError"
        out["stream_arrays"] = [top(a) for a in client.stream([array, pil], model="shapes")]
print(json.dumps(out))
'''


def shapes_dir(tmp_path: Path) -> Path:
    work = tmp_path / "images"
    work.mkdir()
    (work / "circle.png").write_bytes(encode(shape_image("circle", seed=11, size=(200, 200)), "PNG"))
    (work / "star.png").write_bytes(encode(shape_image("star", seed=12, size=(240, 180)), "PNG"))
    (work / "square.jpg").write_bytes(encode(shape_image("square", seed=13)))
    return work


def run_script(python: Path, server, work: Path, mode: str) -> dict:
    script = work / "check.py"
    script.write_text(CLIENT_SCRIPT)
    done = subprocess.run([str(python), str(script), server.url, TOKEN, str(work), mode],
                          capture_output=True, text=True, timeout=600, cwd=work)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_predict_stream_models_and_errors_from_the_fresh_venv(client_venv, token_server, tmp_path):
    out = run_script(client_venv.python, token_server, shapes_dir(tmp_path), "plain")
    assert out["no_token"] == "unauthorized"
    assert out["models"] == ["late", "shapes"]
    assert {out[k] for k in ("str_path", "data_url")} == {"circle"}
    assert (out["path"], out["bytes"]) == ("star", "square")
    assert out["shape"] == {"id": "mine", "labels": 2, "has_hint": True}
    assert out["unknown_model"] == {"code": "unknown_model", "message": True, "id_is_int": True}
    assert out["bad_image"]["code"] == "bad_image"
    assert out["unauthorized"]["code"] == "unauthorized"
    assert out["bad_top_k"]["code"] == "bad_request"
    assert out["images_imported"] == []  # paths, bytes and data URLs need neither PIL nor numpy
    # One answer per frame, in order; the bad frame answered as an error object, not raised.
    assert out["stream"] == ["circle", "bad_image", "star", "square"]
    assert out["stream_ids"] == [0, 1, 2, 3]
    assert out["stream_interval_ok"]
    assert out["late"] == ["label", "score"]
    # The first use of "late" was reported while it loaded, ending ready.
    assert out["statuses"] and out["statuses"][-1] == "ready", out["statuses"]


def test_pil_images_and_numpy_arrays_with_the_images_extra(client_venv, token_server, tmp_path):
    pip(client_venv.python, f"{client_venv.source}[images]")
    found = importable(client_venv.python, ["PIL", "numpy", "flask", "tensorflow", "eventlet"])
    assert found == {"PIL": True, "numpy": True, "flask": False, "tensorflow": False, "eventlet": False}
    out = run_script(client_venv.python, token_server, shapes_dir(tmp_path), "images")
    assert (out["pil"], out["pil_rgba"], out["numpy"]) == ("circle", "circle", "star")
    assert (out["numpy_grey"], out["numpy_float"], out["numpy_empty"]) == ("ValueError",) * 3
    assert out["stream_arrays"] == ["star", "circle"]


def test_latest_frame_wins(token_server):
    from webapp_client import Client, LatestFrame

    latest = LatestFrame()
    frames = [encode(shape_image(label, seed=20 + i)) for i, label in enumerate(["circle", "star"] * 10)]
    with Client(token_server.url, token=TOKEN, timeout=120) as client:
        for frame in frames:  # a camera far faster than the stream
            latest.put(frame)
        latest.close()
        answers = list(client.stream(latest, model="shapes"))
    # Only what was newest when the stream could send left: here the last frame.
    assert len(answers) + latest.dropped == len(frames)
    assert [a["labels"][0]["label"] for a in answers] == ["star"]


def test_a_live_source_in_another_thread(token_server):
    from webapp_client import Client, LatestFrame

    latest = LatestFrame()
    # One picture, so whichever frames the timing lets through, the answer is known.
    frames = [encode(shape_image("triangle", seed=40))] * 40

    def camera():
        for frame in frames:
            latest.put(frame)
            threading.Event().wait(0.01)
        latest.close()

    with Client(token_server.url, token=TOKEN, timeout=120) as client:
        threading.Thread(target=camera, daemon=True).start()
        answers = list(client.stream(latest, model="shapes"))
    assert answers and all(a["labels"][0]["label"] == "triangle" for a in answers)
    assert len(answers) + latest.dropped == len(frames)


def test_reconnects_after_the_server_restarts(model_store, tmp_path):
    from webapp_client import Client, PredictionError

    env = {"MODEL_STORE": str(model_store), "MODEL_CACHE_DIR": str(tmp_path / "cache")}
    first = ServerProcess(env=env, log_dir=tmp_path, async_mode="threading").start()
    first.wait_ready()
    image = encode(shape_image("circle", seed=3))
    events = []
    try:
        client = Client(first.url, timeout=5)
        client.on_disconnect(lambda: events.append("disconnect"))
        client.on_connect(lambda: events.append("connect"))
        assert client.predict(image, model="shapes")["labels"][0]["label"] == "circle"
        first.stop()
        with pytest.raises(PredictionError) as down:  # nothing to reconnect to within the timeout
            client.predict(image, model="shapes")
        assert down.value.code == "disconnected" and not client.connected
        second = ServerProcess(env=env, log_dir=tmp_path, async_mode="eventlet")
        second.port, second.url, second.env["PORT"] = first.port, first.url, str(first.port)
        second.start()
        try:
            client.timeout = 60  # python-socketio retries every 1-5 s
            assert client.predict(image, model="shapes")["labels"][0]["label"] == "circle"
            assert events[:2] == ["disconnect", "connect"] and client.connected
        finally:
            client.close()
            second.stop()
    finally:
        first.stop()


def test_a_stream_carries_on_across_a_server_restart(model_store, tmp_path):
    from webapp_client import Client

    env = {"MODEL_STORE": str(model_store), "MODEL_CACHE_DIR": str(tmp_path / "cache")}
    servers = [ServerProcess(env=env, log_dir=tmp_path, async_mode="eventlet").start()]
    servers[0].wait_ready()
    image = encode(shape_image("square", seed=6))

    def frames():
        for index in range(6):
            if index == 3:  # pulled lazily: the restart happens between two frames
                servers[0].stop()
                restarted = ServerProcess(env=env, log_dir=tmp_path, async_mode="threading")
                restarted.port, restarted.url = servers[0].port, servers[0].url
                restarted.env["PORT"] = str(servers[0].port)
                servers.append(restarted.start())
                restarted.wait_ready()
            yield image

    try:
        with Client(servers[0].url, timeout=60) as client:
            answers = list(client.stream(frames(), model="shapes"))
        assert [a["labels"][0]["label"] for a in answers] == ["square"] * 6
        assert [a["id"] for a in answers] == list(range(6))
    finally:
        for server in servers:
            server.stop()


class NoWebSocketProxy:
    """A reverse proxy that forwards HTTP but refuses WebSocket upgrades, as some proxies do."""

    def __init__(self, target_port: int):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.target_port = target_port
        self.upgrades_refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(downstream,), daemon=True).start()

    def _serve(self, downstream):
        with downstream:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = downstream.recv(65536)
                if not chunk:
                    return
                head += chunk
            if b"transport=websocket" in head.split(b"\r\n", 1)[0]:
                self.upgrades_refused += 1
                downstream.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            with socket.create_connection(("127.0.0.1", self.target_port)) as upstream:
                upstream.sendall(head)
                threading.Thread(target=self._pipe, args=(upstream, downstream), daemon=True).start()
                self._pipe(downstream, upstream)

    @staticmethod
    def _pipe(source, sink):
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.listener.close()


def test_falls_back_to_polling_behind_a_proxy_without_websocket(token_server):
    from webapp_client import Client

    proxy = NoWebSocketProxy(token_server.port)
    try:
        with Client(proxy.url, token=TOKEN, timeout=60) as client:
            label = client.predict(encode(shape_image("star", seed=14)), model="shapes")
            assert label["labels"][0]["label"] == "star"
            assert client._sio.transport() == "polling"
        assert proxy.upgrades_refused >= 1
    finally:
        proxy.close()


def test_connect_errors_say_why():
    from webapp_client import Client, ConnectError

    with pytest.raises(ConnectError) as nowhere:
        Client("http://127.0.0.1:9", timeout=5)
    assert nowhere.value.url == "http://127.0.0.1:9" and nowhere.value.reason


def test_unsupported_inputs_are_refused_before_sending():
    from webapp_client import encode_image

    with pytest.raises(TypeError, match="path, bytes, a PIL image or a numpy array"):
        encode_image(12)
    with pytest.raises(FileNotFoundError):
        encode_image("/nonexistent/picture.jpg")
    assert encode_image(bytearray(b"abc")) == b"abc"
