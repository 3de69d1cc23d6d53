"""Several processes as one server (real Redis on 127.0.0.1:6379), and operating it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

import modelfactory as mf
from images import encode, noise_image, shape_image
from s3server import CountingS3Server
from serverproc import ROOT, ServerProcess

REDIS = "redis://127.0.0.1:6379/0"


def frame(model, seed=0, **extra):
    return {"model": model, "image": encode(noise_image(48, 40, seed=seed)), **extra}


@pytest.fixture
def s3():
    server = CountingS3Server().start()
    yield server
    server.stop()


def test_two_processes_share_notifications_monitors_and_new_versions(s3, tmp_path):
    import keras

    bucket = s3.new_bucket()
    paths = {}
    for index, name in enumerate(["v1", "v2"]):
        keras.utils.set_random_seed(300 + index)
        paths[name] = tmp_path / f"{name}.keras"
        mf.tiny_cnn().save(paths[name])
    env = {**s3.server_env(bucket), "MESSAGE_QUEUE": REDIS, "DEFAULT_MODEL": "",
           # Long refresh: only the notification can make them switch quickly.
           "MODEL_REFRESH_SECONDS": "600"}
    store = f"s3://{bucket}/projects"
    cli_env = {**env}
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n")
    first_publish = subprocess.run([sys.executable, "-m", "webapp", "publish", str(paths["v1"]), "--name", "m",
                                    "--store", store, "--labels", str(labels)],
                                   cwd=ROOT, env={**__import__("os").environ, **cli_env}, capture_output=True,
                                   text=True, timeout=300)
    assert first_publish.returncode == 0, first_publish.stderr
    servers = [ServerProcess(env={**env, "MODEL_CACHE_DIR": str(tmp_path / f"cache{i}")}, log_dir=tmp_path,
                             async_mode=mode).start() for i, mode in enumerate(("eventlet", "threading"))]
    try:
        a, b = servers[0].client(), servers[1].client()
        watcher = servers[0].client()
        assert watcher.call("monitor", {"model": "m"})["room"] == "monitor:m"
        v1 = a.call("frame", frame("m"))["version"]
        assert b.call("frame", frame("m"))["version"] == v1
        # The monitor on process 0 sees predictions made on process 1.
        copies = [watcher.next("prediction", timeout=10) for _ in range(2)]
        assert len({c["process"] for c in copies}) == 2 and all(c["model"] == "m" for c in copies)

        stop = threading.Event()
        seen = {0: [], 1: []}
        errors = []

        def stream(index, client):
            i = 0
            while not stop.is_set():
                answer = client.call("frame", frame("m", seed=i))
                (errors.append(answer) if "code" in answer else seen[index].append(answer["version"]))
                i += 1
                time.sleep(0.05)

        threads = [threading.Thread(target=stream, args=(i, c)) for i, c in enumerate((a, b))]
        for thread in threads:
            thread.start()
        time.sleep(1)
        published = subprocess.run([sys.executable, "-m", "webapp", "publish", str(paths["v2"]), "--name", "m",
                                    "--store", store, "--labels", str(labels), "--queue", REDIS],
                                   cwd=ROOT, env={**__import__("os").environ, **cli_env}, capture_output=True,
                                   text=True, timeout=300)
        assert published.returncode == 0, published.stderr
        assert json.loads(published.stdout)["processes_notified"] >= 2
        deadline = time.monotonic() + 60
        while not all(seen[i] and seen[i][-1] != v1 for i in (0, 1)):
            assert time.monotonic() < deadline, (seen, [s.log()[-2000:] for s in servers])
            time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join(30)
        assert errors == []
        assert seen[0][-1] == seen[1][-1] != v1
        updates = [s for c in (a, b) for s in c.drain("model_status") if s["state"] == "updated"]
        assert len(updates) == 2  # each client told once, by its own process
        for client in (a, b, watcher):
            client.close()
    finally:
        for server in servers:
            server.stop()


def test_notify_command_reaches_the_queue():
    done = subprocess.run([sys.executable, "-m", "webapp", "notify", "--queue", REDIS, "--model", "x"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "processes_notified" in json.loads(done.stdout)
    nowhere = subprocess.run([sys.executable, "-m", "webapp", "notify", "--queue", "redis://127.0.0.1:1/0",
                              "--model", "x"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert nowhere.returncode == 1 and "cannot reach" in nowhere.stderr


def test_metrics_and_dashboard(server):
    with server.client() as client:
        client.call("frame", {"model": "shapes", "image": encode(shape_image("circle"))})
        client.call("frame", {"model": "shapes", "image": b"junk"})
        text = requests.get(server.url + "/metrics", timeout=10).text
    assert 'webapp_frames_total{model="shapes",outcome="label"}' in text
    assert 'webapp_errors_total{code="bad_image",model="shapes"}' in text
    for name in ("webapp_latency_seconds_bucket", "webapp_queue_depth", "webapp_models_loaded",
                 "webapp_connected_clients", "webapp_superseded_total", "webapp_cache_bytes"):
        assert name in text, name
    status = requests.get(server.url + "/api/status", timeout=10).json()
    assert any(m["name"] == "shapes" and m["state"] == "loaded" for m in status["models"])
    assert any(e["code"] == "bad_image" for e in status["recent_errors"])
    page = requests.get(server.url + "/dashboard", timeout=10)
    assert page.status_code == 200 and "monitor" in page.text


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_sigterm_answers_every_frame_sent_before_it(tmp_path, mode):
    server = ServerProcess(async_mode=mode, env={"MODEL_CACHE_DIR": str(tmp_path / "c")}, log_dir=tmp_path).start()
    server.wait_ready()
    clients = [server.client() for _ in range(4)]
    sent = {i: [] for i in range(4)}
    image = encode(shape_image("star", seed=3, size=(320, 240)))
    for round_ in range(15):
        for i, client in enumerate(clients):
            frame_id = f"{i}-{round_}"
            client.emit("frame", {"model": "shapes", "image": image, "id": frame_id})
            sent[i].append(frame_id)
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    code = server.proc.wait(30)
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    for i, client in enumerate(clients):
        answered = {e["id"] for e in client.drain("label")} | {e["id"] for e in client.drain("error")}
        assert set(sent[i]) <= answered, (set(sent[i]) - answered, server.log()[-3000:])
        client.close()
    assert code == 0, server.log()[-3000:]
    assert elapsed < 25
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/healthz", timeout=2)


def test_procfile_command_runs_with_port(tmp_path):
    """The exact Procfile `web:` line, run by honcho with PORT set."""
    import os

    from serverproc import Client, free_port

    port = free_port()
    # As on Heroku, `python` on the PATH is the app's own interpreter.
    env = {**os.environ, "PORT": str(port), "MODEL_CACHE_DIR": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "honcho", "start", "-f", str(ROOT / "Procfile"), "web"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"  # it binds 0.0.0.0; reached here on loopback
    try:
        deadline = time.monotonic() + 90
        while not requests.get(url + "/readyz", timeout=5).ok if _up(url) else True:
            assert time.monotonic() < deadline and proc.poll() is None, "the Procfile server did not come up"
            time.sleep(0.3)
        with Client(url) as client:
            assert client.call("frame", {"model": "shapes", "image": encode(shape_image("square"))})["labels"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _up(url: str) -> bool:
    try:
        requests.get(url + "/healthz", timeout=1)
        return True
    except requests.RequestException:
        return False
