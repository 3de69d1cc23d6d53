"""Every `/metrics` series the README lists, with the value the traffic implies.

A model from S3 (moto, counted) so that the download series have something
to count; two clients connected, one frame answered, one error.
"""

from __future__ import annotations

from collections import defaultdict

import requests
from prometheus_client.parser import text_string_to_metric_families

from images import encode, shape_image
from serverproc import ROOT, ServerProcess

PREFIX = "projects"


def scrape(server) -> dict:
    """sample name -> list of (labels, value)."""
    samples = defaultdict(list)
    for family in text_string_to_metric_families(requests.get(server.url + "/metrics", timeout=10).text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))
    return samples


def value(samples, name, **labels) -> float:
    found = [v for l, v in samples.get(name, []) if all(l.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_every_listed_metric_counts_what_happened(s3, tmp_path):
    bucket = s3.new_bucket()
    client = s3.client()
    for path in (ROOT / "models" / "shapes").iterdir():
        if path.name != "training.json":
            client.put_object(Bucket=bucket, Key=f"{PREFIX}/shapes/{path.name}", Body=path.read_bytes())
    env = {**s3.server_env(bucket, PREFIX), "DEFAULT_MODEL": "", "MODEL_CACHE_DIR": str(tmp_path / "cache")}
    with ServerProcess(env=env, log_dir=tmp_path) as server:
        server.start()
        with server.client() as user, server.client():
            assert "labels" in user.call("frame", {"model": "shapes", "image": encode(shape_image("star"))})
            assert user.call("frame", {"model": "shapes", "image": b"junk"})["code"] == "bad_image"
            samples = scrape(server)
            assert value(samples, "webapp_connected_clients") == 2
        assert value(samples, "webapp_frames_total", model="shapes", outcome="label") == 1
        assert value(samples, "webapp_frames_total", model="shapes", outcome="bad_image") == 1
        assert value(samples, "webapp_errors_total", model="shapes", code="bad_image") == 1
        for stage in ("decode", "queue", "inference", "total"):
            assert value(samples, "webapp_latency_seconds_count", model="shapes", stage=stage) == 1, stage
        assert value(samples, "webapp_queue_depth", model="shapes") == 0
        assert value(samples, "webapp_models_loaded") == 1
        assert value(samples, "webapp_model_memory_bytes", model="shapes") > 0
        assert value(samples, "webapp_cache_bytes") > 0  # the download, on disk
        assert value(samples, "webapp_downloads_total", model="shapes") == 1
        assert value(samples, "webapp_download_seconds_count") == 1
        text = requests.get(server.url + "/metrics", timeout=10).text
        assert "# TYPE webapp_superseded_total counter" in text
