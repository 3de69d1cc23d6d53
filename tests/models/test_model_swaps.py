"""Models that live for weeks: a hundred versions swapped in under streaming
leave the server's threads and memory where they were.

The store is a directory; each new version is a new `labels.txt` written
atomically beside the same model (with its LiteRT file, so no conversion runs),
which is a new version for the refresh check and visible to the client in the
label names it gets back. Threads and RSS are read from /proc, as an operator would.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from images import encode, noise_image
from serverproc import ServerProcess

SWAPS = 100  # measured, after a few to warm up
WARM_UP_SWAPS = 5
#: Allowed growth over the measured swaps. A leaked version holds its two
#: interpreters (their own threads, about 4 MB here); 100 would be +100 threads and 400 MB.
THREAD_SLACK = 2
RSS_SLACK_MB = 30


@pytest.fixture(scope="module")
def model_folder(cnn_with_conversion) -> Path:
    return cnn_with_conversion


def publish_labels(folder: Path, version: int) -> None:
    temporary = folder / ".labels.tmp"
    temporary.write_text(f"v{version}-a\nv{version}-b\n")
    os.replace(temporary, folder / "labels.txt")


def serving_process(pid: int) -> int:
    """The process that serves: the server itself (eventlet), or gunicorn's one worker (threading)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else pid


def threads_and_rss(pid: int) -> tuple[int, float]:
    pid = serving_process(pid)
    threads = len(os.listdir(f"/proc/{pid}/task"))
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return threads, rss_kb / 1024.0


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_a_hundred_version_swaps_under_streaming_leave_threads_and_memory_flat(model_folder, tmp_path, mode):
    store = tmp_path / "store"
    folder = store / "swapme"
    folder.mkdir(parents=True)
    for name in ("model.keras", "model.tflite"):
        (folder / name).write_bytes((model_folder / name).read_bytes())
    publish_labels(folder, 0)
    server = ServerProcess(mode, env={"MODEL_STORE": str(store), "DEFAULT_MODEL": "swapme",
                                      "MODEL_CACHE_DIR": str(tmp_path / "cache"),
                                      "MODEL_REFRESH_SECONDS": "0.25"}, log_dir=tmp_path).start()
    answers: list[dict] = []
    stop = threading.Event()

    def stream():
        with server.client() as client:
            seed = 0
            while not stop.is_set():
                answers.append(client.call("frame", {"model": "swapme", "image": encode(noise_image(40, 40, seed))},
                                           timeout=30))
                seed += 1

    def swap_to(version: int) -> None:
        publish_labels(folder, version)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if answers and answers[-1].get("labels", [{}])[0].get("label", "").startswith(f"v{version}-"):
                return
            time.sleep(0.02)
        raise AssertionError(f"version {version} was not picked up:\n{server.log()[-3000:]}")

    streamer = threading.Thread(target=stream, daemon=True)
    try:
        server.wait_ready()
        streamer.start()
        for version in range(1, WARM_UP_SWAPS + 1):
            swap_to(version)
        time.sleep(1)  # the last retired version released
        threads_before, rss_before = threads_and_rss(server.proc.pid)
        for version in range(WARM_UP_SWAPS + 1, WARM_UP_SWAPS + SWAPS + 1):
            swap_to(version)
        time.sleep(1)
        threads_after, rss_after = threads_and_rss(server.proc.pid)
    finally:
        stop.set()
        streamer.join(30)
        log = server.log()
        server.stop()
    print(f"{mode}: {WARM_UP_SWAPS + SWAPS} swaps, {len(answers)} frames; threads {threads_before} -> "
          f"{threads_after}, RSS {rss_before:.1f} -> {rss_after:.1f} MB")
    failed = [a for a in answers if "labels" not in a]
    assert not failed, failed[:3]
    assert log.count("swapme updated to version") >= WARM_UP_SWAPS + SWAPS
    # Every retired version let go of its runtime (the one serving at the end stays).
    assert log.count("released") >= WARM_UP_SWAPS + SWAPS - 1, log[-3000:]
    assert threads_after <= threads_before + THREAD_SLACK
    assert rss_after <= rss_before + RSS_SLACK_MB
