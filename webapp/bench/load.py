"""Load generators: closed loop (next frame when answered) and open loop (fixed rate)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import numpy as np
import socketio


def _percentiles(latencies_ms: list[float]) -> dict:
    if not latencies_ms:
        return {"p50": None, "p95": None, "p99": None}
    values = np.percentile(np.asarray(latencies_ms), [50, 95, 99])
    return {"p50": round(float(values[0]), 2), "p95": round(float(values[1]), 2), "p99": round(float(values[2]), 2)}


def _connect(url: str, auth: dict | None = None) -> socketio.Client:
    client = socketio.Client(reconnection=False)
    client.connect(url, transports=["websocket"], auth=auth, wait_timeout=180)  # the naive server loads its model here
    return client


def closed_loop(url: str, model: str, image: bytes, clients: int, duration: float, cpu_probe=None,
                fields: dict | None = None) -> dict:
    """Each client sends its next frame as soon as the previous one is answered.

    `cpu_probe()`, if given, returns the server's CPU seconds so far: read when
    the clients start and once they have all stopped (connecting and
    disconnecting are left out), the difference is `server_cpu_s`. `fields`
    are added to every frame (`{"top_k": 0}`: every frame refused unread);
    `answered` counts labels and errors alike."""
    connections = [_connect(url) for _ in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    codes: Counter = Counter()
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    stop_at = [0.0]

    frame = {"model": model, "image": image, **(fields or {})}

    def run(index: int) -> None:
        sio = connections[index]
        start_gate.wait()
        while time.perf_counter() < stop_at[0]:
            sent = time.perf_counter()
            answer = sio.call("frame", frame, timeout=60)
            if "code" in answer:
                with lock:
                    codes[answer["code"]] += 1
            else:
                latencies[index].append((time.perf_counter() - sent) * 1000.0)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.perf_counter() + duration
    cpu_before = cpu_probe() if cpu_probe else 0.0
    began = time.perf_counter()
    start_gate.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    cpu_used = cpu_probe() - cpu_before if cpu_probe else None
    for sio in connections:
        sio.disconnect()
    merged = [x for per_client in latencies for x in per_client]
    return {"clients": clients, "frames": len(merged), "answered": len(merged) + sum(codes.values()),
            "fps": round(len(merged) / elapsed, 2),
            **_percentiles(merged), "superseded": codes.get("superseded", 0),
            "errors": sum(codes.values()) - codes.get("superseded", 0),
            **({"server_cpu_s": round(cpu_used, 3)} if cpu_probe else {})}


def open_loop(url: str, model: str, image: bytes, clients: int, rate: float, duration: float, auth=None,
              sample_rss=None) -> dict:
    """Each client sends at `rate` frames/s regardless of answers (overload)."""
    connections = [_connect(url, auth) for _ in range(clients)]
    sent: dict[tuple[int, int], float] = {}
    latencies: list[float] = []
    codes: Counter = Counter()
    messages: dict[str, str] = {}  # one example message per error code, for the report
    lock = threading.Lock()

    for index, sio in enumerate(connections):
        def on_label(data, index=index):
            now = time.perf_counter()
            with lock:
                started = sent.pop((index, data["id"]), None)
                if started is not None:
                    latencies.append((now - started) * 1000.0)

        def on_error(data, index=index):
            with lock:
                codes[data["code"]] += 1
                messages.setdefault(data["code"], data.get("message"))
                sent.pop((index, data.get("id")), None)

        sio.on("label", on_label)
        sio.on("error", on_error)

    rss_samples = []

    def run(index: int) -> None:
        sio, period, frame_id = connections[index], 1.0 / rate, 0
        next_at = time.perf_counter()
        while time.perf_counter() < stop_at:
            with lock:
                sent[(index, frame_id)] = time.perf_counter()
            sio.emit("frame", {"model": model, "image": image, "id": frame_id})
            frame_id += 1
            next_at += period
            time.sleep(max(0.0, next_at - time.perf_counter()))

    stop_at = time.perf_counter() + duration
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        if sample_rss:
            rss_samples.append(round(sample_rss(), 1))
        time.sleep(0.5)
    time.sleep(3.0)  # let the last answers arrive
    for sio in connections:
        sio.disconnect()
    total_sent = sum(1 for _ in latencies) + sum(codes.values()) + len(sent)
    return {"clients": clients, "rate_per_client": round(rate, 2), "sent": total_sent,
            "answered": len(latencies), **_percentiles(latencies),
            "superseded": codes.get("superseded", 0),
            "errors": sum(codes.values()) - codes.get("superseded", 0),
            "error_codes": {code: n for code, n in codes.items() if code != "superseded"},
            "error_examples": {code: m for code, m in messages.items() if code != "superseded"},
            "never_answered": len(sent), "rss_mb": rss_samples}
