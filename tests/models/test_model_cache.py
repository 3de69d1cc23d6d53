"""The disk cache is safe to share and to kill.

Two server processes on one MODEL_CACHE_DIR download a model once; a process
killed mid-download or mid-eviction leaves nothing the next start-up does not
clean, and that start-up never touches what a live process is doing. S3 is
moto's server, counted, with downloads slowed down so the tests can act
while one is in progress.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from images import encode, noise_image
from s3server import CountingS3Server
from serverproc import ServerProcess

PREFIX = "projects"


class SlowS3(CountingS3Server):
    """Moto that sends chosen objects in small pieces over `slow[path]` seconds."""

    def __init__(self):
        super().__init__()
        self.slow: dict[str, float] = {}

    def _counting(self, environ, start_response):
        body = super()._counting(environ, start_response)
        seconds = self.slow.get(environ.get("PATH_INFO", "")) if environ["REQUEST_METHOD"] == "GET" else None
        return self._trickle(body, seconds) if seconds else body

    @staticmethod
    def _trickle(body, seconds: float, pieces: int = 40):
        data = b"".join(body)
        step = max(1, len(data) // pieces)
        for start in range(0, len(data), step):
            yield data[start:start + step]
            time.sleep(seconds / pieces)


#: The `s3` fixture (tests/conftest.py) serves this test module with it.
S3_SERVER = SlowS3


@pytest.fixture(scope="module")
def model_folder(cnn_with_conversion) -> Path:
    return cnn_with_conversion


def upload(s3, bucket, name, folder: Path) -> str:
    client = s3.client()
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/{name}/labels.txt", Body=b"left\nright\n")
    client.upload_file(str(folder / "model.tflite"), bucket, f"{PREFIX}/{name}/model.tflite")
    client.upload_file(str(folder / "model.keras"), bucket, f"{PREFIX}/{name}/model.keras")
    return f"{PREFIX}/{name}/model.keras"


def server_on(s3, bucket, cache: Path, log_dir: Path, mode="eventlet", model="alpha") -> ServerProcess:
    env = {**s3.server_env(bucket, PREFIX), "MODEL_CACHE_DIR": str(cache), "DEFAULT_MODEL": model}
    return ServerProcess(mode, env=env, log_dir=log_dir).start()


def staged_files(cache: Path) -> list[Path]:
    """Downloads in progress (or left behind): files under staging/ other than process locks."""
    return [p for p in (cache / "staging").rglob("*") if p.is_file() and p.suffix != ".lock"]


def wait_for(condition, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def serves(server, model="alpha") -> bool:
    with server.client() as client:
        answer = client.call("frame", {"model": model, "image": encode(noise_image(40, 40))}, timeout=60)
    return "labels" in answer


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_two_processes_started_while_one_downloads_download_once_and_both_serve(s3, model_folder, tmp_path, mode):
    bucket = s3.new_bucket()
    key = upload(s3, bucket, "alpha", model_folder)
    s3.slow[f"/{bucket}/{key}"] = 4.0
    cache = tmp_path / "cache"
    first = server_on(s3, bucket, cache, tmp_path, mode)
    second = None
    try:
        wait_for(lambda: staged_files(cache), what="the first process's download to start")
        # Started mid-download: its start-up must leave the first one's download alone.
        second = server_on(s3, bucket, cache, tmp_path, mode)
        assert staged_files(cache)
        first.wait_ready(60)
        second.wait_ready(60)
        assert serves(first) and serves(second)
        assert s3.gets(bucket, key) == 1, s3.summary()
        assert (first.log() + second.log()).count("downloaded model alpha") == 1
        assert "could not be stored locally" not in first.log() + second.log()
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert staged_files(cache) == []


def test_a_process_killed_mid_download_leaves_nothing_the_next_start_does_not_clean(s3, model_folder, tmp_path):
    bucket = s3.new_bucket()
    key = upload(s3, bucket, "alpha", model_folder)
    s3.slow[f"/{bucket}/{key}"] = 30.0
    cache = tmp_path / "cache"
    killed = server_on(s3, bucket, cache, tmp_path)
    wait_for(lambda: staged_files(cache), what="the download to start")
    killed.proc.kill()  # SIGKILL: no clean-up of its own
    killed.proc.wait(10)
    killed.stop()
    left = staged_files(cache)
    assert left  # the partial download of the dead process
    del s3.slow[f"/{bucket}/{key}"]
    restarted = server_on(s3, bucket, cache, tmp_path)
    try:
        restarted.wait_ready(60)
        assert serves(restarted)
        assert not any(path.exists() for path in left)
        assert staged_files(cache) == []
        assert s3.gets(bucket, key) == 2
        # Only the live process's staging directory and lock remain.
        assert len([p for p in (cache / "staging").iterdir() if p.is_dir()]) == 1
        assert len(list((cache / "staging").glob("*.lock"))) == 1
    finally:
        restarted.stop()
    entries = [p for p in (cache / "entries" / "alpha").iterdir()]
    assert len(entries) == 1 and (entries[0] / "stored.json").is_file() and (entries[0] / "model.keras").is_file()
    assert list((cache / "trash").iterdir()) == []


def test_what_a_kill_mid_eviction_leaves_is_repaired_at_start_up(s3, model_folder, tmp_path):
    bucket = s3.new_bucket()
    keys = {name: upload(s3, bucket, name, model_folder) for name in ("alpha", "beta")}
    cache = tmp_path / "cache"
    first = server_on(s3, bucket, cache, tmp_path)
    try:
        first.wait_ready(60)
        assert serves(first, "alpha") and serves(first, "beta")
    finally:
        first.stop()
    alpha, = (cache / "entries" / "alpha").iterdir()
    beta, = (cache / "entries" / "beta").iterdir()
    # An older version's rmtree killed half-way: alpha lost its record, beta its model file;
    # this version's eviction killed after the rename: a half-deleted directory in trash/.
    (alpha / "stored.json").unlink()
    (beta / "model.keras").unlink()
    (cache / "trash" / "half-deleted").mkdir()
    (cache / "trash" / "half-deleted" / "model.keras").write_bytes(b"x" * 1000)
    restarted = server_on(s3, bucket, cache, tmp_path)
    try:
        restarted.wait_ready(60)
        assert serves(restarted, "alpha") and serves(restarted, "beta")
        assert s3.gets(bucket, keys["alpha"]) == 2 and s3.gets(bucket, keys["beta"]) == 2  # fetched again
    finally:
        restarted.stop()
    for name in ("alpha", "beta"):
        entry, = (cache / "entries" / name).iterdir()
        assert (entry / "stored.json").is_file() and (entry / "model.keras").is_file()
    assert list((cache / "trash").iterdir()) == []


# -- the cache itself, in process (real files, real OS locks) --------------------


def test_start_up_repair_leaves_a_live_process_alone_and_cleans_a_dead_one(tmp_path):
    from webapp.models.cache import DiskCache

    live = DiskCache(tmp_path, 10**9)
    (live._own_staging / "download").mkdir()
    (live._own_staging / "download" / "model.keras").write_bytes(b"partial")
    DiskCache(tmp_path, 10**9)  # another process starting: the live download stays
    assert (live._own_staging / "download" / "model.keras").is_file()
    live._process_lock.release()  # as the kernel does when the process is killed
    DiskCache(tmp_path, 10**9)
    assert not live._own_staging.exists()
    assert not (tmp_path / "staging" / f"{live.process_id}.lock").exists()


def test_conversions_count_within_the_bound_and_are_evicted_least_recently_used_first(tmp_path):
    from webapp.models.cache import DiskCache

    cache = DiskCache(tmp_path, 2500)
    for index, name in enumerate(("old", "new")):
        folder = tmp_path / "converted" / name / "f1"
        folder.mkdir(parents=True)
        (folder / "model.tflite").write_bytes(b"x" * 1000)
        os.utime(folder, (1000 + index, 1000 + index))
    assert cache.total_bytes() == 2000
    cache.make_room(1000)
    assert not (tmp_path / "converted" / "old" / "f1").exists()
    assert (tmp_path / "converted" / "new" / "f1" / "model.tflite").is_file()
    assert cache.total_bytes() == 1000
    cache.make_room(5000, protected={"new/f1"})  # in use: never evicted, even over the bound
    assert (tmp_path / "converted" / "new" / "f1").is_dir()
    assert list((tmp_path / "trash").iterdir()) == []
