"""Freed image memory goes back to the system (glibc's mmap threshold, `mallopt`).

glibc keeps freed memory per thread by default: after its first large free it
raises its mmap threshold, later decoded images come from per-thread heaps
that are not trimmed, and RSS ratchets up to threads x largest image. The
server fixes the threshold at start-up so buffers of 1 MB and more are
returned when freed. Measured here from /proc: after a burst of large decodes
on several threads, the serving process's RSS comes back to where it was.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from conftest import ASYNC_MODES
from images import encode, shape_image
from serverproc import ServerProcess
from test_memory_bounds import proc_status, reset_peak

MB = 1024 * 1024
CLIENTS, ROUNDS = 6, 3
#: 4000x4000 RGB: ~64 MB once decoded (Pillow stores 4 bytes a pixel), ~50 KB encoded.
SIDE = 4000
DECODED = SIDE * SIDE * 4


@pytest.fixture(scope="module", params=ASYNC_MODES)
def server(request, model_store, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"memory-return-{request.param}")
    # A decode budget large enough that the burst decodes side by side.
    with ServerProcess(async_mode=request.param, log_dir=workdir,
                       env={"MODEL_STORE": str(model_store), "DEFAULT_MODEL": "shapes",
                            "MEMORY_LIMIT_MB": "8192", "DECODE_MEMORY_MB": "1024",
                            "MODEL_CACHE_DIR": str(workdir / "cache")}) as proc:
        proc.start()
        proc.wait_ready()
        yield proc


def test_rss_comes_back_after_a_burst_of_large_decodes(server):
    big = encode(Image.new("RGB", (SIDE, SIDE), (30, 120, 200)), "PNG")
    small = encode(shape_image("circle", seed=1))
    clients = [server.client() for _ in range(CLIENTS)]
    try:
        # Every connection (and, in threading mode, its thread) exists before the baseline.
        for client in clients:
            assert client.call("frame", {"model": "shapes", "image": small})["labels"]
        pid = server.serving_pid
        baseline = proc_status(pid)["VmRSS"]
        reset_peak(pid)

        def burst(client):
            return [client.call("frame", {"model": "shapes", "image": big}, timeout=120) for _ in range(ROUNDS)]

        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = [a for batch in pool.map(burst, clients) for a in batch]
        assert all("labels" in a for a in answers), [a for a in answers if "labels" not in a][:3]
        peak = proc_status(pid)["VmHWM"]
        # The burst did hold decoded images (at least one at a time).
        assert peak - baseline >= DECODED * 0.75, f"peak only {(peak - baseline) / MB:.0f} MB over the baseline"
        # ... and gives them back: RSS returns to within half an image of where it was.
        deadline = time.monotonic() + 20
        while (rss := proc_status(pid)["VmRSS"]) > baseline + DECODED // 2:
            assert time.monotonic() < deadline, (
                f"RSS stayed {(rss - baseline) / MB:.0f} MB above the baseline after the burst "
                f"(peak +{(peak - baseline) / MB:.0f} MB)")
            time.sleep(0.2)
        assert clients[0].call("frame", {"model": "shapes", "image": small})["labels"]
    finally:
        for client in clients:
            client.close()
