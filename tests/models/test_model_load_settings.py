"""Two settings of a model's life: `MODEL_LOAD_TIMEOUT` and `WARM_SET_SIZE`.

* `MODEL_LOAD_TIMEOUT`: a frame waits at most that long for its model to
  load, then gets `model_unavailable`; the load itself goes on and later frames
  are labelled. The load is made to last for certain by holding the model's
  download in moto (no guess about how long a load takes).
* `WARM_SET_SIZE`: after a restart, only that many of the most recently used
  models are loaded again, in the background, without any frame asking; the
  record behind it forgets deleted models and stays bounded.
"""

from __future__ import annotations

import json
import re
import threading
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from images import encode, shape_image
from s3server import CountingS3Server
from serverproc import ROOT, ServerProcess

PREFIX = "projects"
DEMO = ROOT / "models" / "shapes"


def wait_until(predicate, timeout, message):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, message() if callable(message) else message
        time.sleep(0.1)
    return value


def frames_total(server, model: str, outcome: str) -> float:
    text = requests.get(server.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "webapp_frames_total" and sample.labels == {"model": model, "outcome": outcome}:
                return sample.value
    return 0.0


def models_by_name(server) -> dict:
    return {m["name"]: m for m in requests.get(server.url + "/api/models", timeout=30).json()["models"]}


class HoldingS3Server(CountingS3Server):
    """moto that holds every GET of an object under `held` until `release()`:
    a download that lasts exactly as long as the test wants."""

    def __init__(self):
        super().__init__()
        self.held = ""
        self._gate = threading.Event()

    def _counting(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if self.held and environ["REQUEST_METHOD"] == "GET" and path.startswith(self.held):
            self._gate.wait(120)
        return super()._counting(environ, start_response)

    @property
    def holding(self) -> bool:
        return bool(self.held) and not self._gate.is_set()

    def release(self) -> None:
        self._gate.set()


def test_a_frame_waits_at_most_model_load_timeout_for_its_model(tmp_path):
    s3 = HoldingS3Server().start()
    try:
        bucket = s3.new_bucket()
        client = s3.client()
        for path in DEMO.iterdir():
            if path.name != "training.json":
                client.put_object(Bucket=bucket, Key=f"{PREFIX}/shapes/{path.name}", Body=path.read_bytes())
        s3.held = f"/{bucket}/{PREFIX}/shapes/"
        env = {**s3.server_env(bucket, PREFIX), "DEFAULT_MODEL": "", "MODEL_LOAD_TIMEOUT": "2",
               "S3_READ_TIMEOUT": "120", "MODEL_CACHE_DIR": str(tmp_path / "cache")}
        image = encode(shape_image("square", seed=2))
        with ServerProcess(env=env, log_dir=tmp_path) as server:
            server.start()
            with server.client() as user:
                # The download cannot finish while it is held: only the timeout can answer.
                answer = user.call("frame", {"model": "shapes", "image": image, "id": 1}, timeout=60)
                assert s3.holding, "answered only once the download was let through"
                assert answer["code"] == "model_unavailable" and answer["id"] == 1, answer
                assert "still loading" in answer["message"], answer
                assert user.connected
                assert frames_total(server, "shapes", "model_unavailable") == 1
                statuses = [s["state"] for s in user.drain("model_status")]
                assert "downloading" in statuses, statuses  # it was told why it waited
                s3.release()
                # The load went on without the frame: the next ones are labelled.
                label = wait_until(lambda: (lambda a: a if "labels" in a else None)(
                    user.call("frame", {"model": "shapes", "image": image}, timeout=60)), 60,
                    lambda: server.log()[-3000:])
                assert label["labels"][0]["label"] == "square"
            assert s3.gets(bucket, f"{PREFIX}/shapes/model.keras") + s3.gets(
                bucket, f"{PREFIX}/shapes/model.tflite") >= 1
            # One download per file: the frame that gave up did not start another.
            assert all(count == 1 for key, count in s3.summary().items() if key.startswith(f"GET {s3.held}")), \
                s3.summary()
    finally:
        s3.release()
        s3.stop()


def test_only_warm_set_size_recent_models_are_loaded_again_after_a_restart(model_store, tmp_path):
    cache = tmp_path / "cache"
    # A short refresh makes the maintenance loop (which records the warm set) tick fast.
    env = {"MODEL_STORE": str(model_store), "DEFAULT_MODEL": "", "MODEL_CACHE_DIR": str(cache),
           "MODEL_REFRESH_SECONDS": "1"}
    used = ["tiny", "logits", "binary"]  # in this order: binary is the most recent
    with ServerProcess(env=env, log_dir=tmp_path / "first") as first:
        (tmp_path / "first").mkdir()
        first.start()
        with first.client() as user:
            for name in used:
                assert user.call("frame", {"model": name, "image": encode(shape_image("circle"))})["labels"]
                time.sleep(0.01)  # distinct use times, however coarse the clock
        warm = cache / "warm.json"
        wait_until(lambda: warm.exists() and set(used) <= set(json.loads(warm.read_text() or "{}")), 30,
                   lambda: f"the warm set was never recorded: {first.log()[-2000:]}")

    (tmp_path / "second").mkdir()
    with ServerProcess(env={**env, "WARM_SET_SIZE": "2"}, log_dir=tmp_path / "second") as second:
        second.start()
        line = wait_until(lambda: re.search(r"warm set from the last run: (.*)", second.log()), 30,
                          lambda: second.log()[-2000:])
        assert line.group(1).strip() == "binary, logits", line.group(0)
        # Loaded in the background, no frame asked for them.
        listed = wait_until(lambda: (lambda m: m if m["binary"]["loaded"] and m["logits"]["loaded"] else None)(
            models_by_name(second)), 120, lambda: second.log()[-3000:])
        assert listed["tiny"]["loaded"] is False, listed
        assert re.search(r"model binary version \S+ loaded", second.log())  # the line the next check relies on
        assert not re.search(r"model tiny version \S+ loaded", second.log()), second.log()


def test_the_warm_set_forgets_deleted_models_and_keeps_a_bounded_record(model_store, tmp_path):
    """A server run for weeks on a store whose models come and go: the warm set
    left by earlier runs names a deleted model, models last used a month ago
    and far more names than any warm set. The deleted one is forgotten without
    a warning (and never tried again), and the record keeps only the 100 most
    recently used names of the last 7 days."""
    from webapp.models.warmset import WARM_SET_RECORDED

    cache = tmp_path / "cache"
    cache.mkdir()
    now = time.time()
    recorded = {"deleted-model": now,
                **{f"month-old-{i}": now - 30 * 24 * 3600 for i in range(50)},
                **{f"earlier-{i:03d}": now - 3600 - i for i in range(2 * WARM_SET_RECORDED)}}
    warm = cache / "warm.json"
    warm.write_text(json.dumps(recorded))
    env = {"MODEL_STORE": str(model_store), "DEFAULT_MODEL": "", "MODEL_CACHE_DIR": str(cache),
           "MODEL_REFRESH_SECONDS": "1", "WARM_SET_SIZE": "1"}
    with ServerProcess(env=env, log_dir=tmp_path) as server:
        server.start()
        wait_until(lambda: "model deleted-model from the warm set is no longer in the store" in server.log(),
                   30, lambda: server.log()[-2000:])
        with server.client() as user:
            assert user.call("frame", {"model": "tiny", "image": encode(shape_image("circle"))})["labels"]
        record = wait_until(lambda: (lambda r: r if "tiny" in r else None)(json.loads(warm.read_text())), 30,
                            lambda: f"the warm set was never recorded again: {server.log()[-2000:]}")
        assert "deleted-model" not in record
        assert not any(name.startswith("month-old-") for name in record), sorted(record)[:5]
        assert len(record) == WARM_SET_RECORDED, len(record)
        # The most recently used of the earlier names are the ones kept.
        assert "earlier-000" in record and f"earlier-{2 * WARM_SET_RECORDED - 1}" not in record
        assert "preloading model deleted-model failed" not in server.log()

    # The next run, with the largest warm set, does not try the deleted model again.
    (tmp_path / "again").mkdir()
    with ServerProcess(env={**env, "WARM_SET_SIZE": str(WARM_SET_RECORDED)}, log_dir=tmp_path / "again") as again:
        again.start()
        line = wait_until(lambda: re.search(r"warm set from the last run: (.*)", again.log()), 30,
                          lambda: again.log()[-2000:])
        assert line.group(1).split(", ")[0] == "tiny", line.group(0)
        assert "deleted-model" not in again.log()


def test_a_model_with_frames_waiting_is_never_unloaded_for_the_bound(model_store, tmp_path):
    """MAX_LOADED_MODELS=1: loading a second model unloads the least recently
    used one, unless frames are waiting for it."""
    from callsignals import SignallingServer

    calls = tmp_path / "calls"
    calls.mkdir()
    # One interpreter: a second frame waits in the queue instead of starting a second call.
    env = {"MODEL_STORE": str(model_store), "DEFAULT_MODEL": "", "MAX_LOADED_MODELS": "1",
           "LITERT_INTERPRETERS": "1", "MODEL_CACHE_DIR": str(tmp_path / "cache")}
    image = encode(shape_image("circle", seed=5))
    with SignallingServer(calls, env=env, log_dir=tmp_path) as server:
        server.start()
        with server.client() as a, server.client() as b, server.client() as c:
            assert "labels" in a.call("frame", {"model": "tiny", "image": image})  # tiny loaded
            server.hold("tiny")
            try:
                before = len(server.started_calls("tiny"))
                a.emit("frame", {"model": "tiny", "image": image, "id": "running"})
                server.wait_for_calls("tiny", before + 1)
                b.emit("frame", {"model": "tiny", "image": image, "id": "waiting"})
                wait_until(lambda: requests.get(server.url + "/metrics", timeout=10).text.count(
                    'webapp_queue_depth{model="tiny"} 1.0'), 60, lambda: server.log()[-2000:])
                # Another model loads meanwhile: over the bound, but tiny has a frame waiting.
                assert "labels" in c.call("frame", {"model": "logits", "image": image}, timeout=120)
                listed = models_by_name(server)
                assert listed["tiny"]["loaded"] and listed["logits"]["loaded"], listed
                assert "unloaded model tiny" not in server.log()
            finally:
                server.release("tiny")
            assert a.next("label", timeout=60)["id"] == "running"
            assert b.next("label", timeout=60)["id"] == "waiting"
            # Without frames waiting, the bound applies again on the next load: tiny goes.
            assert "labels" in c.call("frame", {"model": "binary", "image": image}, timeout=120)
            wait_until(lambda: "unloaded model tiny" in server.log(), 30, lambda: server.log()[-2000:])
