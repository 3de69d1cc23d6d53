"""Unknown model names cost nothing that grows: a bounded number of store
calls however many random names clients send, and a model published
afterwards is still found within seconds. S3 is moto's server, counted."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import requests

from images import encode, noise_image
from serverproc import ServerProcess
from webapp.models.registry import UNKNOWN_RELIST_SECONDS

PREFIX = "projects"



@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import modelfactory as mf

    path = tmp_path_factory.mktemp("names") / "model.keras"
    mf.tiny_cnn().save(path)
    return path


def upload(s3, bucket, name, path):
    client = s3.client()
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{name}/labels.txt", Body=b"red\ngreen\nblue\n")
    client.upload_file(str(path), bucket, f"{PREFIX}/{name}/model.keras")


def frame(model, seed=0):
    return {"model": model, "image": encode(noise_image(40, 40, seed=seed))}


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_a_thousand_unknown_names_cost_a_bounded_number_of_store_calls(s3, model_file, tmp_path, mode):
    bucket = s3.new_bucket()
    upload(s3, bucket, "alpha", model_file)
    server = ServerProcess(mode, env={**s3.server_env(bucket, PREFIX), "MODEL_CACHE_DIR": str(tmp_path / "cache"),
                                      "DEFAULT_MODEL": "alpha"}, log_dir=tmp_path).start()
    try:
        server.wait_ready()
        with server.client() as client:
            assert "labels" in client.call("frame", frame("alpha"))
        before = len(s3.requests)
        answers: list[dict] = []

        def send(count):
            with server.client() as client:
                for _ in range(count):
                    answers.append(client.call("frame", frame(f"nope-{uuid.uuid4().hex[:12]}")))

        started = time.monotonic()
        senders = [threading.Thread(target=send, args=(250,)) for _ in range(4)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(300)
        elapsed = time.monotonic() - started
        over_http = requests.get(f"{server.url}/api/models/nope-{uuid.uuid4().hex[:12]}", timeout=10)
        store_calls = s3.requests[before:]
        print(f"{mode}: 1000 unknown names in {elapsed:.1f}s cost {len(store_calls)} S3 requests")
        assert len(answers) == 1000
        assert all(a.get("code") == "unknown_model" for a in answers), [a for a in answers if
                                                                         a.get("code") != "unknown_model"][:3]
        assert over_http.status_code == 404 and over_http.json()["error"]["code"] == "unknown_model"
        # At most one listing per UNKNOWN_RELIST_SECONDS (plus the one in progress at each end), never one per name.
        assert len(store_calls) <= 2 + elapsed / UNKNOWN_RELIST_SECONDS, store_calls
        assert all(method == "GET" and "list-type=2" in query for method, _, query in store_calls)

        # A model published now is found within seconds, however recently the store was listed.
        upload(s3, bucket, "fresh", model_file)
        deadline = time.monotonic() + UNKNOWN_RELIST_SECONDS + 10
        with server.client() as client:
            answer = client.call("frame", frame("fresh"))
            while "labels" not in answer and time.monotonic() < deadline:
                assert answer["code"] == "unknown_model", answer
                time.sleep(0.2)
                answer = client.call("frame", frame("fresh"))
        assert "labels" in answer, answer
    finally:
        server.stop()


def test_known_is_true_only_for_models_the_server_has_or_the_store_lists(tmp_path, model_file):
    """`ModelRegistry.known` (what metrics label by): memory only, no store call."""
    from webapp.server.async_mode import ThreadingConcurrency
    from webapp.config import load_config
    from webapp.errors import UnknownModel
    from webapp.models.registry import ModelRegistry
    from webapp.models.store import LocalStore

    (tmp_path / "store" / "alpha").mkdir(parents=True)
    (tmp_path / "store" / "alpha" / "model.keras").write_bytes(model_file.read_bytes())
    settings = load_config({"MODEL_STORE": str(tmp_path / "store"), "ASYNC_MODE": "threading"})
    from webapp.frames.batching import batcher_factory

    concurrency = ThreadingConcurrency()
    registry = ModelRegistry(LocalStore(tmp_path / "store"), concurrency, settings,
                             make_batcher=batcher_factory(concurrency, 8))
    assert not registry.known("alpha")  # nothing listed yet, and known() never lists
    with pytest.raises(UnknownModel):
        registry.acquire("nope")
    assert registry.known("alpha") and not registry.known("nope")
