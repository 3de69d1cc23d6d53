"""Several processes as one server (a real redis-server of the suite's own), and operating it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

import modelfactory as mf
from images import encode, noise_image, shape_image
from callsignals import SignallingServer
from serverproc import ROOT, ServerProcess

def frame(model, seed=0, **extra):
    return {"model": model, "image": encode(noise_image(48, 40, seed=seed)), **extra}



def test_two_processes_share_notifications_monitors_and_new_versions(s3, tmp_path, redis_url):
    import keras

    bucket = s3.new_bucket()
    paths = {}
    for index, name in enumerate(["v1", "v2"]):
        keras.utils.set_random_seed(300 + index)
        paths[name] = tmp_path / f"{name}.keras"
        mf.tiny_cnn().save(paths[name])
    env = {**s3.server_env(bucket), "MESSAGE_QUEUE": redis_url, "DEFAULT_MODEL": "",
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
    servers = []
    try:
        for index, mode in enumerate(("eventlet", "threading")):
            # Appended before it starts: owned (and stopped below) even if start fails.
            servers.append(ServerProcess(env={**env, "MODEL_CACHE_DIR": str(tmp_path / f"cache{index}")},
                                         log_dir=tmp_path, async_mode=mode))
            servers[-1].start()
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
                                    "--store", store, "--labels", str(labels), "--queue", redis_url],
                                   cwd=ROOT, env={**__import__("os").environ, **cli_env}, capture_output=True,
                                   text=True, timeout=300)
        assert published.returncode == 0, published.stderr
        assert json.loads(published.stdout)["processes_notified"] == 2  # the two servers, each once
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


def test_notify_command_reaches_every_listening_process(redis_url):
    import redis

    from webapp.server.messaging import CONTROL_CHANNEL

    def notify() -> dict:
        done = subprocess.run([sys.executable, "-m", "webapp", "notify", "--queue", redis_url, "--model", "x"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert notify()["processes_notified"] == 0
    listeners = [redis.Redis.from_url(redis_url).pubsub() for _ in range(2)]
    try:
        for pubsub in listeners:  # stand-ins for two server processes
            pubsub.subscribe(CONTROL_CHANNEL)
            pubsub.get_message(timeout=5)  # the subscription's confirmation
        assert notify()["processes_notified"] == 2
        messages = [pubsub.get_message(timeout=5) for pubsub in listeners]
        assert all(json.loads(m["data"]) == {"action": "revalidate", "model": "x"} for m in messages)
    finally:
        for pubsub in listeners:
            pubsub.close()
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
    assert page.status_code == 200 and '<script type="module" src="/static/dashboard.js">' in page.text
    # The page is built on the monitor room (its live feed is checked in a browser by web/test_pages.py).
    script = requests.get(server.url + "/static/dashboard.js", timeout=10)
    assert script.status_code == 200 and 'emit("monitor"' in script.text


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_sigterm_answers_every_frame_in_flight_and_refuses_new_ones(model_store, tmp_path, mode):
    """Frames the server holds when SIGTERM arrives (one running, the others
    queued behind it, as the server itself reports) are all *labelled*; a
    frame sent after it is answered `overloaded`; then every socket closes
    and the process exits 0."""
    calls = tmp_path / "calls"
    calls.mkdir()
    with SignallingServer(calls, async_mode=mode, log_dir=tmp_path,
                          env={"MODEL_STORE": str(model_store), "DEFAULT_MODEL": "tiny", "RUNTIME": "tensorflow",
                               "MODEL_CACHE_DIR": str(tmp_path / "cache")}) as server:
        server.start()
        server.wait_ready()
        clients = [server.client() for _ in range(4)]
        late = server.client()
        try:
            image = encode(noise_image(320, 320, seed=5))
            clients[0].call("frame", {"model": "slow", "image": image}, timeout=120)  # loaded
            before = sum(server.started_calls("slow"))
            for i, client in enumerate(clients):
                client.emit("frame", {"model": "slow", "image": image, "id": i})

            def held() -> int:  # frames the server has: in calls started since, or queued
                status = requests.get(server.url + "/api/status", timeout=10).json()
                queued = sum(m["queue_depth"] for m in status["models"] if m["name"] == "slow")
                return sum(server.started_calls("slow")) - before + queued

            deadline = time.monotonic() + 60
            while held() < 4:
                assert time.monotonic() < deadline, server.log()[-3000:]
                time.sleep(0.02)
            assert all(client.drain("label") == [] for client in clients)  # still in flight

            server.signal(signal.SIGTERM)
            # The signal is handled asynchronously; /readyz says when the server has started draining.
            deadline = time.monotonic() + 10
            while not requests.get(server.url + "/readyz", timeout=10).json().get("shutting_down"):
                assert time.monotonic() < deadline, server.log()[-3000:]
                time.sleep(0.02)
            refused = late.call("frame", {"model": "tiny", "image": encode(noise_image())}, timeout=30)
            answers = [client.next("label", timeout=60) for client in clients]
            code = server.proc.wait(30)
            assert [answer["id"] for answer in answers] == [0, 1, 2, 3]
            assert all(client.drain("error") == [] for client in clients)
            assert refused["code"] == "overloaded", refused
            deadline = time.monotonic() + 10
            while any(client.connected for client in clients):  # every socket was closed
                assert time.monotonic() < deadline
                time.sleep(0.1)
        finally:
            for client in [*clients, late]:
                client.close()
        assert code == 0, server.log()[-3000:]
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
