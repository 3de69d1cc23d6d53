"""`publish` is never seen half-done, even through a slow store: a server
checking for new versions four times a second while `python -m webapp publish`
writes a new version file by file keeps serving the old one (no frame error,
no `failed` notice, no version made of old and new files) and serves the new
one once the publish completes.

S3 is moto's server, counted, made slow to write: every PUT into the model's
folder (and every part of a multipart upload) lands only after a delay, so
the publish takes seconds between its files, as over a slow uplink. The new
version has four classes where the old one had three: a set mixing the two
cannot load (labels against outputs), so any half-published set the server
tried would show up as a `failed` notice or a frame error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import modelfactory as mf
from images import encode, noise_image
from s3server import CREDENTIALS, CountingS3Server
from serverproc import ROOT, ServerProcess

PREFIX = "projects"
PUT_DELAY = 1.5


class SlowWritesS3(CountingS3Server):
    """Moto where writes under `slow_prefix` land `PUT_DELAY` seconds late, in
    the order they land recorded in `landed`."""

    def __init__(self):
        super().__init__()
        self.slow_prefix: str | None = None
        self.landed: list[str] = []

    def _counting(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        slow = (environ["REQUEST_METHOD"] in ("PUT", "POST") and self.slow_prefix is not None
                and path.startswith(self.slow_prefix))
        if slow:
            time.sleep(PUT_DELAY)  # werkzeug serves each request in its own thread
        body = super()._counting(environ, start_response)
        if slow and environ["REQUEST_METHOD"] == "PUT" and not environ.get("QUERY_STRING"):
            self.landed.append(path.rsplit("/", 1)[-1])  # a whole object (not a part) written
        return body

    def listings(self) -> int:
        with self._lock:
            return sum(1 for method, path, query in self.requests if method == "GET" and "list-type" in query)


#: The `s3` fixture (tests/conftest.py) serves this test module with it.
S3_SERVER = SlowWritesS3


@pytest.fixture(scope="module")
def versions(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Two versions of one model: (model file, labels file), three classes then four."""
    folder = tmp_path_factory.mktemp("publish-versions")
    built = {}
    for name, labels in (("v1", ["red", "green", "blue"]), ("v2", ["north", "east", "south", "west"])):
        model = folder / f"{name}.keras"
        mf.tiny_cnn(units=len(labels)).save(model)
        (folder / f"{name}.txt").write_text("\n".join(labels) + "\n")
        built[name] = (model, folder / f"{name}.txt")
    return built


def publish(s3, bucket: str, model: Path, labels: Path) -> dict:
    env = {**os.environ, **CREDENTIALS, "S3_ENDPOINT_URL": s3.url}
    done = subprocess.run([sys.executable, "-m", "webapp", "publish", str(model), "--name", "alpha",
                           "--store", f"s3://{bucket}/{PREFIX}", "--labels", str(labels)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_a_slow_publish_is_never_served_half_done(s3, versions, tmp_path, mode):
    bucket = s3.new_bucket()
    publish(s3, bucket, *versions["v1"])
    server = ServerProcess(mode, env={**s3.server_env(bucket, PREFIX), "DEFAULT_MODEL": "alpha",
                                      "MODEL_CACHE_DIR": str(tmp_path / "cache"),
                                      "MODEL_REFRESH_SECONDS": "0.25", "MODEL_LIST_TTL": "0"},
                           log_dir=tmp_path).start()
    answers: list[dict] = []
    stop = threading.Event()
    clients = []

    def stream(seed: int) -> None:
        with server.client() as client:
            clients.append(client)
            while not stop.is_set():
                answers.append(client.call("frame", {"model": "alpha", "image": encode(noise_image(32, 32, seed))},
                                           timeout=60))
                seed += 2

    streams = [threading.Thread(target=stream, args=(seed,), daemon=True) for seed in (0, 1)]
    try:
        server.wait_ready()
        for thread in streams:
            thread.start()
        deadline = time.monotonic() + 60
        while not answers and time.monotonic() < deadline:
            time.sleep(0.05)
        first = answers[0]
        assert [item["label"] for item in first["labels"]] and first["labels"][0]["label"] in ("red", "green", "blue")
        s3.slow_prefix = f"/{bucket}/{PREFIX}/alpha/"
        checks_before = s3.listings()
        published = publish(s3, bucket, *versions["v2"])  # seconds between its files
        checks_during = s3.listings() - checks_before
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and answers[-1]["labels"][0]["label"] not in ("north", "east", "south", "west"):
            time.sleep(0.05)
        time.sleep(1)  # a few frames more on the new version
    finally:
        stop.set()
        for thread in streams:
            thread.join(60)
        log = server.log()
        server.stop()
    notices = [n for client in clients for n in client.drain("model_status") if n.get("model") == "alpha"]
    print(f"{mode}: {len(answers)} frames, {checks_during} version checks during the publish, "
          f"writes landed in order {s3.landed}")
    # The publish was slow and watched: the server listed the folder many times meanwhile.
    assert checks_during >= 10, checks_during
    # Every frame answered, by the old version or the new one, never by a mix.
    errors = [a for a in answers if "labels" not in a]
    assert not errors, (errors[:3], log[-3000:])
    versions_seen = list(dict.fromkeys(a["version"] for a in answers))
    assert len(versions_seen) == 2, (versions_seen, log[-3000:])
    old, new = versions_seen
    assert all(len(a["labels"]) <= 3 for a in answers if a["version"] == old)  # top-k of three classes
    assert {a["labels"][0]["label"] for a in answers if a["version"] == new} <= {"north", "east", "south", "west"}
    assert [n["state"] for n in notices if n["state"] in ("failed", "updated")] == ["updated"] * len(clients), notices
    assert "failed to load" not in log and "could not be loaded now" not in log, log[-3000:]
    # How: the manifest is written last, after every file of the version.
    assert s3.landed[-1] == "manifest.json" and len(s3.landed) >= 5, s3.landed
    assert published["files"][-1].endswith("/manifest.json")


def test_a_directory_store_mid_publish_keeps_the_old_version(tmp_path, versions):
    """The same rule in a directory store: between the first file of a new
    version and its manifest, `find` gives no version (the server keeps the
    one it serves); the listing still shows the model; the manifest completes it."""
    from webapp.models.store import LocalStore, PublishInProgress
    from webapp.models.store.publish import publish as publish_files

    store_dir = tmp_path / "store"
    model, labels = versions["v1"]
    publish_files(str(store_dir), "alpha", {"model.keras": model, "labels.txt": labels}, {})
    store = LocalStore(store_dir)
    old = store.find("alpha")
    assert (store_dir / "alpha" / "manifest.json").is_file()
    new_model, new_labels = versions["v2"]
    # A publish of v2 stopped after its first file (as a slow one is, for a while):
    written = store_dir / "alpha" / "labels.txt"
    written.write_bytes(new_labels.read_bytes())
    manifest_time = (store_dir / "alpha" / "manifest.json").stat().st_mtime
    os.utime(written, (manifest_time + 1, manifest_time + 1))  # written after it, whatever the clock's tick
    with pytest.raises(PublishInProgress):
        store.find("alpha")
    assert [m.name for m in store.list_models()] == ["alpha"]
    publish_files(str(store_dir), "alpha", {"model.keras": new_model, "labels.txt": new_labels}, {})
    new = store.find("alpha")
    assert new is not None and new.fingerprint != old.fingerprint
