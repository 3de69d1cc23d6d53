"""README promises about a model's life in the server that had no test.

Each test here drives the real server (a subprocess) with the real Socket.IO
client and real HTTP, on a local model store or moto's S3 server, and each
asserts what a user would notice if the promise were dropped: a model that
stays loaded, an error instead of a label, a listing that is not cached, a
log line that is not JSON, ...
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import requests

import modelfactory as mf
from images import encode, noise_image
from s3server import CountingS3Server
from serverproc import ROOT, Client, ServerProcess

PREFIX = "projects"


def wait_until(predicate, timeout: float, message):
    """Poll `predicate` until it returns something truthy, or fail with `message()`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message() if callable(message) else message)
        time.sleep(0.1)


def frame(model, seed=0, **extra):
    return {"model": model, "image": encode(noise_image(48, 40, seed=seed)), **extra}


def models_by_name(server):
    return {m["name"]: m for m in requests.get(server.url + "/api/models", timeout=30).json()["models"]}


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory):
    """Small Keras files with distinct weights: name -> path."""
    import keras

    root = tmp_path_factory.mktemp("keras-files")
    files = {}
    for index, name in enumerate(["alpha", "beta", "gamma"]):
        keras.utils.set_random_seed(200 + index)
        path = root / f"{name}.keras"
        mf.tiny_cnn().save(path)
        files[name] = path
    keras.utils.set_random_seed(210)
    path = root / "queued.keras"
    mf.slow_cnn(size=160, depth=5, filters=64).save(path)  # a few frames a second on 2 cores
    files["queued"] = path
    return files


def directory_store(root: Path, files: dict, names, labels=("red", "green", "blue")) -> Path:
    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        shutil.copy(files[name], folder / "model.keras")
        (folder / "labels.txt").write_text("\n".join(labels) + "\n")
    return root


# -- memory: MAX_LOADED_MODELS; logs: LOG_FORMAT=json; the monitor `status` event ----------------


@pytest.fixture(scope="module")
def bounded_server(keras_files, tmp_path_factory):
    """Room in memory for every model, but MAX_LOADED_MODELS=1; logs as JSON."""
    workdir = tmp_path_factory.mktemp("bounded")
    store = directory_store(workdir / "store", keras_files, ["alpha", "beta"])
    with ServerProcess(env={"MODEL_STORE": str(store), "DEFAULT_MODEL": "", "MAX_LOADED_MODELS": "1",
                            "MODEL_MEMORY_MB": "1000", "LOG_FORMAT": "json",
                            "MODEL_CACHE_DIR": str(workdir / "cache")}, log_dir=workdir) as proc:
        proc.start()
        yield proc


def test_max_loaded_models_unloads_the_least_recently_used(bounded_server):
    with bounded_server.client() as client:
        assert client.call("frame", frame("alpha"))["labels"]
        assert models_by_name(bounded_server)["alpha"]["loaded"] is True
        assert client.call("frame", frame("beta"))["labels"]
        listed = models_by_name(bounded_server)
        # Memory would hold both: only the count bound unloads alpha.
        assert listed["beta"]["loaded"] is True and listed["alpha"]["loaded"] is False, listed
        assert listed["alpha"]["state"] == "in store", listed  # a local store: nothing to cache
        # It comes back on use, and then beta is the one unloaded.
        assert client.call("frame", frame("alpha", seed=1))["labels"]
        listed = models_by_name(bounded_server)
        assert listed["alpha"]["loaded"] is True and listed["beta"]["loaded"] is False, listed
    assert '"message": "unloaded model alpha' in bounded_server.log()


def test_log_format_json_writes_one_json_object_per_line(bounded_server):
    with bounded_server.client() as client:
        assert client.call("frame", frame("alpha", seed=2))["labels"]
    records = []
    for line in bounded_server.log().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))  # every such line parses: one object per line
        # No record of ours in the text format ("2026-11-22 08:00:00,123 INFO webapp...: ...").
        assert not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ webapp", line), line
    assert records, bounded_server.log()
    assert all({"time", "level", "logger", "message"} <= set(record) for record in records), records
    loaded = [r for r in records if r["logger"] == "webapp.models.registry" and r["message"].startswith("model alpha")]
    assert loaded and loaded[0]["level"] == "INFO", records


def test_monitor_room_gets_a_status_event_from_the_process(bounded_server):
    with bounded_server.client() as monitor, bounded_server.client() as user:
        joined = monitor.call("monitor")
        assert joined["room"] == "monitor"
        assert user.call("frame", frame("beta", seed=3))["labels"]
        status = monitor.next("status", timeout=10)  # sent every second
        assert status["process"] == joined["process"]
        assert {"models", "memory", "connected_clients", "recent_errors", "time"} <= set(status)
        # The snapshots follow what happens: the model just used shows up.
        wait_until(lambda: "beta" in {m["name"] for m in monitor.next("status", timeout=10)["models"]},
                   30, "the status events never listed the model in use")
        assert user.drain("status") == []  # only the monitor room gets them


# -- new versions on a local store ---------------------------------------------------------------


def test_a_new_version_that_fails_to_load_leaves_the_old_one_serving(keras_files, tmp_path):
    store = directory_store(tmp_path / "store", keras_files, ["alpha"])
    with ServerProcess(env={"MODEL_STORE": str(store), "DEFAULT_MODEL": "", "MODEL_REFRESH_SECONDS": "1",
                            "MODEL_CACHE_DIR": str(tmp_path / "cache")}, log_dir=tmp_path) as server:
        server.start()
        with server.client() as client:
            first = client.call("frame", frame("alpha"))
            old = first["version"]
            (store / "alpha" / "model.keras").write_bytes(b"PK\x03\x04 not a model any more")
            failed = wait_until(
                lambda: next((s for s in client.drain("model_status") if s["state"] == "failed"), None)
                or (client.call("frame", frame("alpha", seed=1)) and None),
                180, lambda: f"no model_status failed:\n{server.log()}")
            assert failed["model"] == "alpha" and failed["serving"] == old, failed
            assert failed["version"] != old and failed["message"], failed
            # Still answered, by the old version, with its labels.
            after = client.call("frame", frame("alpha", seed=2))
            assert after["version"] == old and after["labels"], after
            assert client.drain("error") == []
        assert models_by_name(server)["alpha"]["loaded"] is True
        assert f"failed to load, still serving {old}" in server.log()


class OrderedClient(Client):
    """A client that also records every event in the order it arrived."""

    def _recorder(self, name):
        if not hasattr(self, "timeline"):
            self.timeline = []
        record = super()._recorder(name)

        def both(data=None):
            self.timeline.append((name, data))
            record(data)
        return both


def test_frames_already_queued_finish_on_the_old_version(keras_files, tmp_path):
    """A metadata change is a new version; frames in the old version's queue
    when it is swapped are answered by it (old labels), none is lost."""
    store = tmp_path / "store"
    folder = store / "queued"
    folder.mkdir(parents=True)
    shutil.copy(keras_files["queued"], folder / "model.keras")
    (folder / "labels.txt").write_text("left\nright\n")
    old_labels, new_labels = {"left", "right"}, {"links", "rechts"}
    with ServerProcess(env={"MODEL_STORE": str(store), "DEFAULT_MODEL": "", "MODEL_REFRESH_SECONDS": "1",
                            "MODEL_CACHE_DIR": str(tmp_path / "cache")}, log_dir=tmp_path) as server:
        server.start()
        clients = [OrderedClient(server.url, transports=("websocket",)) for _ in range(4)]
        stop = threading.Event()
        problems = []

        def stream(client, index):
            sent = 0
            try:
                while not stop.is_set():
                    client.emit("frame", {"model": "queued", "id": sent,
                                          "image": encode(noise_image(160, 160, seed=index * 1000 + sent))})
                    answer = client.events["label"].get(timeout=120)
                    assert answer["id"] == sent, answer
                    sent += 1
            except Exception as exc:  # reported below, with the timeline
                problems.append(repr(exc))

        try:
            assert clients[0].call("frame", frame("queued"))["labels"]  # loaded before streaming
            clients[0].timeline.clear()
            clients[0].drain("label")
            threads = [threading.Thread(target=stream, args=(c, i), daemon=True) for i, c in enumerate(clients)]
            for thread in threads:
                thread.start()
            wait_until(lambda: all(sum(n == "label" for n, _ in c.timeline) >= 2 for c in clients), 120,
                       "streaming did not start")
            (folder / "labels.txt").write_text("links\nrechts\n")
            wait_until(lambda: all(any(n == "label" and {l["label"] for l in d["labels"]} == new_labels
                                       for n, d in list(c.timeline)) for c in clients),
                       180, lambda: f"the new version was never served:\n{server.log()}")
            stop.set()
            for thread in threads:
                thread.join(120)
        finally:
            stop.set()
            for client in clients:
                client.close()
        assert problems == [], problems
        late_old_answers = 0
        for client in clients:
            assert [data for name, data in client.timeline if name == "error"] == []
            kinds = []
            updated = False
            for name, data in client.timeline:
                if name == "model_status" and data["state"] == "updated":
                    updated = True
                elif name == "label":
                    kind = "old" if {l["label"] for l in data["labels"]} == old_labels else "new"
                    kinds.append(kind)
                    late_old_answers += updated and kind == "old"
            # Old answers, then new ones: never back to the old version.
            assert kinds == sorted(kinds, key=lambda k: k == "new") and kinds[0] == "old", kinds
        # Frames queued (or running) when the swap happened were answered by the old version.
        assert late_old_answers >= 1, [c.timeline for c in clients]


# -- the LiteRT faithfulness check and its TensorFlow fallback ---------------------------------


@pytest.fixture(scope="module")
def runtime_store(tmp_path_factory):
    """`faithful` converts faithfully; `unfaithful` converts, but its outputs (huge
    weights) differ from Keras far beyond 1e-4; `unconvertible` uses an op LiteRT
    does not have (erfinv)."""
    keras = mf._keras()
    from keras import ops

    root = tmp_path_factory.mktemp("runtime-store")
    mf.save_directory_model(root, "faithful", mf.tiny_cnn(), labels=["a", "b", "c"])
    inputs = keras.Input((16, 16, 3))
    huge = keras.initializers.RandomNormal(stddev=1000.0, seed=1)
    x = keras.layers.Dense(64, kernel_initializer=huge)(keras.layers.Flatten()(inputs))
    outputs = keras.layers.Dense(3, kernel_initializer=huge)(x)
    mf.save_directory_model(root, "unfaithful", keras.Model(inputs, outputs), labels=["a", "b", "c"],
                            meta={"output": "logits"})
    inputs = keras.Input((16, 16, 3))
    x = ops.erfinv(keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 300.0)(inputs)))
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    mf.save_directory_model(root, "unconvertible", keras.Model(inputs, outputs), labels=["a", "b", "c"])
    return root


def test_litert_only_when_faithful_else_tensorflow_with_the_reason(runtime_store, tmp_path):
    with ServerProcess(env={"MODEL_STORE": str(runtime_store), "DEFAULT_MODEL": "", "RUNTIME": "auto",
                            "MODEL_CACHE_DIR": str(tmp_path / "cache")}, log_dir=tmp_path) as server:
        server.start()
        details = {name: requests.get(f"{server.url}/api/models/{name}", timeout=300).json()
                   for name in ("faithful", "unfaithful", "unconvertible")}
        assert details["faithful"]["runtime"] == "litert", details["faithful"]
        assert details["faithful"]["runtime_note"] is None
        assert details["unfaithful"]["runtime"] == "tensorflow", details["unfaithful"]
        assert "outputs differ" in details["unfaithful"]["runtime_note"], details["unfaithful"]
        assert details["unconvertible"]["runtime"] == "tensorflow", details["unconvertible"]
        assert "conversion failed" in details["unconvertible"]["runtime_note"], details["unconvertible"]
        # The fallbacks serve, and say which runtime answered.
        with server.client() as client:
            for name in ("unfaithful", "unconvertible"):
                answer = client.call("frame", frame(name))
                assert answer["runtime"] == "tensorflow" and len(answer["labels"]) == 3, answer
            assert client.call("frame", frame("faithful"))["runtime"] == "litert"
        log = server.log()
        for name in ("unfaithful", "unconvertible"):
            assert f"model {name}: serving with TensorFlow instead of LiteRT" in log, log
        converted = tmp_path / "cache" / "converted"
        assert list(converted.glob("faithful/*/model.tflite"))
        assert not list(converted.glob("unfaithful/*/model.tflite"))  # never kept when unfaithful


# -- publish to a directory store ---------------------------------------------------------------


def run_cli(*args, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "webapp", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_publish_to_a_directory_store_then_serve(keras_files, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\n")  # the model has 3 outputs
    refused = run_cli("publish", str(keras_files["gamma"]), "--name", "delta", "--store", str(store),
                      "--labels", str(labels))
    assert refused.returncode != 0 and "3 outputs" in refused.stderr, refused.stderr
    assert list(store.iterdir()) == []  # refused before anything was written

    labels.write_text("red\ngreen\nblue\n")
    published = run_cli("publish", str(keras_files["gamma"]), "--name", "delta", "--store", str(store),
                        "--labels", str(labels), "--preprocess", "unit")
    assert published.returncode == 0, published.stderr
    files = sorted(p.name for p in (store / "delta").iterdir())
    # Written atomically: only the final names, no temporary file left behind.
    assert files == ["labels.txt", "manifest.json", "model.json", "model.keras", "model.tflite"], files
    assert (store / "delta" / "model.keras").read_bytes() == keras_files["gamma"].read_bytes()
    meta = json.loads((store / "delta" / "model.json").read_text())
    assert meta["preprocess"] == "unit" and meta["labels"] == ["red", "green", "blue"], meta

    with ServerProcess(env={"MODEL_STORE": str(store), "DEFAULT_MODEL": "",
                            "MODEL_CACHE_DIR": str(tmp_path / "cache")}, log_dir=tmp_path) as server:
        server.start()
        details = requests.get(server.url + "/api/models/delta", timeout=120).json()
        assert details["labels"] == ["red", "green", "blue"] and details["preprocess"] == "unit", details
        assert details["runtime"] == "litert"
        assert "converted to LiteRT" not in server.log()  # the published model.tflite was used


# -- S3: listing cache, no credentials, content check --------------------------------------------


def upload_model(s3, bucket, name, path, labels=("red", "green", "blue")):
    import boto3
    from botocore.config import Config

    # No flexible checksum on upload: then the ETag (a plain MD5) is the only
    # content check a download has, and it is the server's own.
    client = boto3.client("s3", endpoint_url=s3.url, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing",
                          config=Config(request_checksum_calculation="when_required",
                                        response_checksum_validation="when_required"))
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{name}/labels.txt", Body="\n".join(labels).encode())
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{name}/model.keras", Body=path.read_bytes())
    return f"{PREFIX}/{name}/model.keras"


def listings(s3, bucket) -> int:
    """ListObjectsV2 requests for the whole store prefix (what model lists use)."""
    with s3._lock:
        requests_seen = list(s3.requests)
    count = 0
    for method, path, query in requests_seen:
        params = parse_qs(query)
        if method == "GET" and path.rstrip("/") == f"/{bucket}" and params.get("prefix") == [f"{PREFIX}/"]:
            count += 1
    return count


def s3_server(s3, bucket, tmp_path, cache=None, **env):
    settings = {**s3.server_env(bucket, PREFIX), "MODEL_CACHE_DIR": str(cache or tmp_path / "cache"),
                "DEFAULT_MODEL": "", **{k: str(v) for k, v in env.items()}}
    return ServerProcess(env=settings, log_dir=tmp_path)


def test_model_listing_is_cached_for_model_list_ttl(s3, keras_files, tmp_path):
    bucket = s3.new_bucket()
    upload_model(s3, bucket, "alpha", keras_files["alpha"])
    with s3_server(s3, bucket, tmp_path, MODEL_LIST_TTL=4) as server:
        server.start()
        assert set(models_by_name(server)) == {"alpha"}
        listed_once = listings(s3, bucket)
        assert listed_once >= 1
        upload_model(s3, bucket, "beta", keras_files["beta"])
        with server.client() as client:
            # Within the TTL: HTTP and Socket.IO lists come from the cache, without asking S3.
            assert set(models_by_name(server)) == {"alpha"}
            assert {m["name"] for m in client.call("models")["models"]} == {"alpha"}
        assert listings(s3, bucket) == listed_once, s3.summary()
        # After it, the store is listed again and the new model appears.
        wait_until(lambda: "beta" in models_by_name(server), 30, "the listing was never refreshed")
        assert listings(s3, bucket) > listed_once
        assert s3.gets(bucket, f"{PREFIX}/beta/model.keras") == 0  # listing downloads nothing


def test_without_credentials_one_log_line_and_cached_models_still_serve(s3, keras_files, tmp_path):
    bucket = s3.new_bucket()
    alpha = upload_model(s3, bucket, "alpha", keras_files["alpha"])
    upload_model(s3, bucket, "beta", keras_files["beta"])
    cache = tmp_path / "cache"
    with s3_server(s3, bucket, tmp_path, cache=cache) as first:
        first.start()
        with first.client() as client:
            version = client.call("frame", frame("alpha"))["version"]
        assert "no AWS credentials" not in first.log()

    second = s3_server(s3, bucket, tmp_path, cache=cache)
    for key in [k for k in second.env if k.startswith("AWS_")]:
        del second.env[key]
    second.env.update({"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                       "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_EC2_METADATA_DISABLED": "true"})
    with second:
        second.start()
        with second.client() as client:
            for seed in range(3):
                answer = client.call("frame", frame("alpha", seed=seed))
                assert answer["version"] == version and answer["labels"], answer
            missing = client.call("frame", frame("beta"))  # never cached: cannot be downloaded
            assert missing["code"] == "model_unavailable", missing
        requests.get(second.url + "/api/models", timeout=30)
        lines = [line for line in second.log().splitlines() if "no AWS credentials found" in line]
        assert len(lines) == 1, second.log()
        assert "WARNING" in lines[0]
    assert s3.gets(bucket, alpha) == 1  # the second server served alpha from its cache


class FlippingS3Server(CountingS3Server):
    """Adds a `flip` fault: the object's bytes arrive whole, one of them changed,
    as a faulty proxy or disk would deliver them (the size still matches)."""

    def _broken(self, body, fault):
        if fault != "flip":
            return super()._broken(body, fault)
        data = bytearray(b"".join(body))
        data[1] ^= 0x04  # "red" -> "rad": still a valid labels file
        return [bytes(data)]


def test_a_download_whose_content_does_not_match_its_etag_is_refused(keras_files, tmp_path):
    s3 = FlippingS3Server().start()
    try:
        bucket = s3.new_bucket()
        upload_model(s3, bucket, "alpha", keras_files["alpha"])
        labels_key = f"{PREFIX}/alpha/labels.txt"
        s3.faults[f"/{bucket}/{labels_key}"] = "flip"
        with s3_server(s3, bucket, tmp_path) as server:
            server.start()
            with server.client() as client:
                refused = client.call("frame", frame("alpha"))
                assert refused["code"] == "model_unavailable", refused
                assert "does not match its ETag" in refused["message"], refused
                entries = tmp_path / "cache" / "entries"
                assert not entries.exists() or not any(entries.rglob("labels.txt"))  # never cached
                staging = tmp_path / "cache" / "staging"  # per process: only process locks may stay
                assert not [p for p in staging.rglob("*") if p.is_file() and p.suffix != ".lock"]
                # Once the bytes arrive intact, the retry (after its back-off) serves the real labels.
                s3.faults.clear()
                answer = wait_until(lambda: (lambda a: a if "labels" in a else None)(
                    client.call("frame", frame("alpha", top_k=3))), 60, "never served after the fault")
                assert {item["label"] for item in answer["labels"]} == {"red", "green", "blue"}, answer
            assert s3.gets(bucket, labels_key) == 2, s3.summary()
    finally:
        s3.stop()
