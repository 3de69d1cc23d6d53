"""`python -m webapp bench --swaps N`: stream while N new versions are published.

A dyno runs for weeks while projects publish new versions; each retired
version must give back its threads and memory. This starts one server on a
directory store holding the demo model, streams from four clients, and
publishes N versions one after another (each a new `labels.txt`, written
atomically beside the same model files, so no conversion runs), waiting for
each to be served. It reports the serving process's threads and RSS after a
few warm-up swaps and at the end, the frames answered and any that failed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import socketio

from ..config import PROJECT_ROOT
from . import process
from .run import jpeg

CLIENTS = 4
WARM_UP = 5
REFRESH_SECONDS = 0.25


def serving_pid(pid: int) -> int:
    """The server itself (eventlet) or gunicorn's one worker (threading)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else pid


def threads_and_rss(pid: int) -> tuple[int, float]:
    pid = serving_pid(pid)
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return len(os.listdir(f"/proc/{pid}/task")), round(rss_kb / 1024.0, 1)


def swaps(count: int, mode: str, out: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix="webapp-swaps-"))
    folder = work / "store" / "swapme"
    shutil.copytree(PROJECT_ROOT / "models" / "shapes", folder)
    names = (PROJECT_ROOT / "models" / "shapes" / "labels.txt").read_text().split()

    def publish(version: int) -> None:
        temporary = folder / ".labels.tmp"
        temporary.write_text("".join(f"v{version}-{name}\n" for name in names))
        os.replace(temporary, folder / "labels.txt")

    publish(0)
    env = {"MODEL_STORE": str(work / "store"), "MODEL_CACHE_DIR": str(work / "cache"), "DEFAULT_MODEL": "swapme",
           "LOG_LEVEL": "WARNING", "MODEL_REFRESH_SECONDS": str(REFRESH_SECONDS)}
    proc, url = process.start_server(mode, env, work / "server.log")
    image, stop = jpeg(224, 224), threading.Event()
    latest, counts = [""], {"answered": 0, "failed": 0}
    lock = threading.Lock()

    def stream() -> None:
        client = socketio.Client(reconnection=False)
        client.connect(url, transports=["websocket"], wait_timeout=60)
        try:
            while not stop.is_set():
                answer = client.call("frame", {"model": "swapme", "image": image}, timeout=60)
                with lock:
                    if "labels" in answer:
                        counts["answered"] += 1
                        latest[0] = answer["labels"][0]["label"]
                    else:
                        counts["failed"] += 1
        finally:
            client.disconnect()

    def swap_to(version: int) -> None:
        publish(version)
        deadline = time.monotonic() + 30
        while not latest[0].startswith(f"v{version}-"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"version {version} was not picked up; see {work / 'server.log'}")
            time.sleep(0.02)

    streamers = [threading.Thread(target=stream, daemon=True) for _ in range(CLIENTS)]
    started = time.monotonic()
    try:
        for streamer in streamers:
            streamer.start()
        for version in range(1, WARM_UP + 1):
            swap_to(version)
        time.sleep(1.0)
        before = threads_and_rss(proc.pid)
        for version in range(WARM_UP + 1, WARM_UP + count + 1):
            swap_to(version)
        time.sleep(1.0)
        after = threads_and_rss(proc.pid)
    finally:
        stop.set()
        for streamer in streamers:
            streamer.join(30)
        process.stop(proc)
        shutil.rmtree(work, ignore_errors=True)
    report = {"mode": mode, "swaps": count, "warm_up_swaps": WARM_UP, "seconds": round(time.monotonic() - started),
              "threads": {"before": before[0], "after": after[0]}, "rss_mb": {"before": before[1], "after": after[1]},
              **counts}
    out.write_text(json.dumps(report, indent=2))
    print(f"swaps: {count} versions in {report['seconds']} s ({mode}, {CLIENTS} clients streaming): "
          f"threads {before[0]} -> {after[0]}, RSS {before[1]} -> {after[1]} MB, "
          f"{counts['answered']} frames answered, {counts['failed']} failed")
    return report


def run(args) -> int:
    reports = [swaps(int(args.swaps), mode, Path(args.out).with_suffix(f".swaps.{mode}.json"))
               for mode in args.modes.split(",")]
    return 0 if all(r["failed"] == 0 for r in reports) else 1
