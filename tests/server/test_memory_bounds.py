"""The memory budget read from the container, and what one client can make the server hold.

Each test drives the real server (both async modes) the way a hostile or
careless client would, measures the server's memory from /proc, and checks
that a good frame is still answered afterwards.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image

from images import encode, shape_image
from serverproc import ROOT, ServerProcess
from webapp.bench.hostile import SlowImageHost

ADMIN = "admin-secret"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
MB = 1024 * 1024
DECODE_MB = 200
LIMIT_MB = 1024


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of a process, in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as file:
        file.write("5")


@pytest.fixture(scope="module", params=("eventlet", "threading"))
def server(request, model_store, tmp_path_factory):
    workdir = tmp_path_factory.mktemp(f"memory-{request.param}")
    proc = ServerProcess(async_mode=request.param, log_dir=workdir, env={
        "MODEL_STORE": str(model_store), "MODEL_CACHE_DIR": str(workdir / "cache"), "ADMIN_TOKEN": ADMIN,
        "MEMORY_LIMIT_MB": str(LIMIT_MB), "DECODE_MEMORY_MB": str(DECODE_MB),
        "URL_FETCH_ALLOW": "127.0.0.1", "URL_FETCH_CONCURRENCY": "4"})
    try:
        proc.start()
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def admin_get(server, path):
    return requests.get(server.url + path, headers=ADMIN_HEADERS, timeout=10)


def good_frame_answered(server, token: str | None = ADMIN) -> None:
    with server.client(auth={"token": token} if token else None) as client:
        answer = client.call("frame", {"model": "shapes", "image": encode(shape_image("circle", seed=2))})
    assert answer["labels"][0]["label"] == "circle", answer


# -- the limit and the budgets -------------------------------------------------


def test_the_limit_is_read_from_cgroup_v2_then_v1_then_physical_memory(tmp_path):
    from webapp.server.memory import memory_limit, physical_memory

    v2, v1 = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v2.write_text(f"{512 * MB}\n")
    assert memory_limit(str(v2), str(v1)) == (512 * MB, "cgroup v2")
    v2.write_text("max\n")  # no limit at this level: fall through to v1
    v1.write_text(f"{1024 * MB}\n")
    assert memory_limit(str(v2), str(v1)) == (1024 * MB, "cgroup v1")
    v1.write_text("9223372036854771712\n")  # cgroup v1's "unlimited"
    assert memory_limit(str(v2), str(v1)) == (physical_memory(), "physical memory")


def test_budgets_are_derived_from_the_limit_unless_set():
    from webapp.config import load_config

    derived = load_config({"MEMORY_LIMIT_MB": 512})
    assert derived["MEMORY_LIMIT_BYTES"] == 512 * MB
    assert 100 <= derived["MODEL_MEMORY_MB"] < 512 * 0.5
    assert 50 <= derived["DECODE_MEMORY_MB"] < 512 * 0.5
    assert 16 <= derived["MAX_CONNECTIONS"] <= 10_000
    bigger = load_config({"MEMORY_LIMIT_MB": 1024})
    assert bigger["MODEL_MEMORY_MB"] > derived["MODEL_MEMORY_MB"]
    assert bigger["MAX_CONNECTIONS"] > derived["MAX_CONNECTIONS"]
    explicit = load_config({"MEMORY_LIMIT_MB": 512, "MODEL_MEMORY_MB": 99, "MAX_CONNECTIONS": 7})
    assert (explicit["MODEL_MEMORY_MB"], explicit["MAX_CONNECTIONS"]) == (99, 7)


@pytest.mark.parametrize("variable,value", [
    ("MODEL_REFRESH_SECONDS", "0"), ("MAX_WAITING_FRAMES", "0"), ("MODEL_MEMORY_MB", "-5"),
    ("DECODE_MEMORY_MB", "0"), ("PROJECT_TOKENS", "{not json"), ("MAX_BATCH", "many"),
])
def test_a_bad_setting_stops_the_server_at_start_naming_it(variable, value):
    done = subprocess.run([sys.executable, "-m", "webapp", "serve"], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT), variable: value}, timeout=60)
    assert done.returncode == 2
    assert variable in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_status_and_metrics_show_limit_rss_and_budgets(server):
    memory = admin_get(server, "/api/status").json()["memory"]
    assert memory["limit_bytes"] == LIMIT_MB * MB and memory["limit_source"] == "MEMORY_LIMIT_MB"
    assert memory["budgets"]["decode_memory_bytes"] == DECODE_MB * MB
    assert memory["budgets"]["model_memory_bytes"] > 0 and memory["budgets"]["max_connections"] > 0
    actual = proc_status(server.serving_pid)["VmRSS"]
    assert 0.7 * actual < memory["rss_bytes"] < 1.3 * actual
    gauges = dict(line.split(" ", 1) for line in admin_get(server, "/metrics").text.splitlines()
                  if line.startswith(("webapp_memory_limit_bytes ", "webapp_rss_bytes ")))
    assert float(gauges["webapp_memory_limit_bytes"]) == LIMIT_MB * MB
    assert 0.7 * actual < float(gauges["webapp_rss_bytes"]) < 1.3 * actual


# -- decode memory ---------------------------------------------------------------


def test_concurrent_large_pngs_stay_within_the_decode_budget(server):
    """12 clients each send a 6000x6000 single-colour PNG (~120 KB encoded,
    144 MB decoded): without the budget the server held them all at once."""
    big = io.BytesIO()
    Image.new("RGB", (6000, 6000), (200, 30, 30)).save(big, "PNG")
    png = big.getvalue()
    assert len(png) < 200_000
    pid = server.serving_pid
    before = proc_status(pid)["VmRSS"]
    reset_peak(pid)

    def send(_):
        with server.client(auth={"token": ADMIN}) as client:
            return client.call("frame", {"model": "shapes", "image": png}, timeout=120)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, range(12)))
    peak = proc_status(pid)["VmHWM"]
    codes = ["label" if "labels" in a else a["code"] for a in answers]
    assert "label" in codes, answers
    assert set(codes) <= {"label", "overloaded"}, answers
    # The budget plus the messages themselves and allocator slack.
    assert peak - before < (DECODE_MB + 80) * MB, f"RSS grew {(peak - before) / MB:.0f} MB"
    good_frame_answered(server)


def test_an_image_that_could_never_fit_the_budget_is_too_large_at_once(server):
    big = io.BytesIO()
    Image.new("RGBA", (7000, 7000), (0, 0, 0, 0)).save(big, "PNG")  # ~392 MB decoded, over 200 MB
    with server.client(auth={"token": ADMIN}) as client:
        answer = client.call("frame", {"model": "shapes", "image": big.getvalue(), "id": 7})
    assert answer.get("code") == "too_large" and "DECODE_MEMORY_MB" in answer["message"], answer
    assert answer["id"] == 7
    good_frame_answered(server)


# -- unknown names -----------------------------------------------------------------


def test_random_unknown_names_do_not_grow_metrics_or_status(server):
    before = admin_get(server, "/metrics").text.count("\n")
    with server.client(auth={"token": ADMIN}) as client:
        for _ in range(300):
            answer = client.call("frame", {"model": f"nope-{uuid.uuid4().hex[:12]}",
                                           "image": encode(shape_image("circle", seed=1))})
            assert answer["code"] == "unknown_model"
    metrics = admin_get(server, "/metrics").text
    assert 'model="unknown"' in metrics and "nope-" not in metrics
    assert metrics.count("\n") - before < 20
    status = admin_get(server, "/api/status").json()
    assert not any(m["name"].startswith("nope-") for m in status["models"])
    assert not any(e["model"].startswith("nope-") for e in status["recent_errors"])
    good_frame_answered(server)


# -- slow image URLs ---------------------------------------------------------------


def test_slow_image_urls_do_not_delay_other_clients(server):
    images = SlowImageHost(delay=60)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    url = images.url
    try:
        with ThreadPoolExecutor(6) as pool:
            fetches = [pool.submit(requests.post, server.url + "/api/models/shapes/predict",
                                   json={"url": url}, timeout=60, headers=ADMIN_HEADERS) for _ in range(6)]
            # Four fetches (URL_FETCH_CONCURRENCY) reach the slow host...
            for _ in range(4):
                assert images.held.acquire(timeout=30)
            # ...the other two are answered `overloaded` without waiting for them,
            done, _ = wait_for(fetches, count=2, timeout=30)
            refused = list(done)
            assert len(refused) == 2
            assert all(f.result().json()["error"]["code"] == "overloaded" for f in refused)
            # and while four fetches hang, other clients' frames are answered.
            assert not any(f.done() for f in fetches if f not in refused)
            good_frame_answered(server)
            body = base64.b64encode(encode(shape_image("circle", seed=4))).decode()
            answer = requests.post(server.url + "/api/models/shapes/predict", json={"image": body},
                                   timeout=30, headers=ADMIN_HEADERS).json()
            assert answer["labels"][0]["label"] == "circle"
            images.release.set()
            held = [f.result().json() for f in fetches if f not in refused]
        # The same labels as the image itself sent directly.
        direct = requests.post(server.url + "/api/models/shapes/predict", headers=ADMIN_HEADERS, timeout=30,
                               json={"image": base64.b64encode(images.body).decode()}).json()
        assert [a["labels"] for a in held] == [direct["labels"]] * 4, held
    finally:
        images.release.set()
        images.shutdown()


def wait_for(futures, count: int, timeout: float):
    """Wait until `count` of `futures` are done (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [f for f in futures if f.done()]
        if len(done) >= count:
            return done, [f for f in futures if not f.done()]
        concurrent.futures.wait([f for f in futures if not f.done()], timeout=0.2,
                                return_when=concurrent.futures.FIRST_COMPLETED)
    return [f for f in futures if f.done()], [f for f in futures if not f.done()]


def test_a_warning_is_logged_when_rss_passes_90_percent_of_the_limit(model_store, tmp_path):
    """A limit below what the process already uses: the status feed's memory
    check warns once, naming the limit and where it came from."""
    with ServerProcess(log_dir=tmp_path, env={"MODEL_STORE": str(model_store), "MEMORY_LIMIT_MB": "80",
                                              "MODEL_CACHE_DIR": str(tmp_path / "cache")}) as proc:
        proc.start()
        deadline = time.monotonic() + 30
        while "over 90% of the 80 MB limit (MEMORY_LIMIT_MB)" not in proc.log():
            assert time.monotonic() < deadline, proc.log()[-2000:]
            time.sleep(0.2)
        good_frame_answered(proc, token=None)
        assert proc.log().count("over 90% of the") == 1  # once per excursion, not every second



def test_usable_cpus_follow_the_cgroup_v2_then_v1_quota(tmp_path):
    """FRAME_THREADS and glibc's heap cap follow the CPUs a container may use
    (Docker's `--cpus`), not the host's: a quota rounds up to whole CPUs."""
    import os

    from webapp.config import usable_cpus

    host = len(os.sched_getaffinity(0))
    v2, v1 = tmp_path / "cpu.max", tmp_path / "cpu.cfs_quota_us"
    assert usable_cpus(str(v2), str(v1)) == host  # neither file: no quota
    v2.write_text("50000 100000\n")  # half a CPU
    assert usable_cpus(str(v2), str(v1)) == 1
    v2.write_text("max 100000\n")  # no quota at this level: v1 decides
    v1.write_text("150000\n")
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(str(v2), str(v1)) == min(host, 2)
    v1.write_text("-1\n")  # cgroup v1's "no quota"
    assert usable_cpus(str(v2), str(v1)) == host
