"""The server's own cost per frame: server CPU, the model's CPU, the difference.

For each async mode and model, 8 clients send 224x224 JPEGs in a closed loop;
the server's CPU time (user + system of its whole process tree, from /proc,
so gunicorn's worker and every native thread count) over those seconds,
divided by the frames answered, is the **server CPU per frame**. It does not
depend on the load generator sharing the cores, as fps does.

The **model's own CPU per frame** is a bare LiteRT interpreter (1 thread,
batch 8) running the same model in a subprocess of its own, timed with
`time.process_time`, for the file the server answered with (`runtime`: the
int8 file for `litert-int8`, else the float one, as code from before int8
serves). The **overhead** is the difference: what the server adds
(decoding, Socket.IO, hand-offs between threads, answers).

This VM's CPU speed drifts by 10% or more within an hour, so each row also
times a **reference task** right before it, in the bench process: one full
Pillow decode of the frame, a resize to 64x64 and a JSON round trip of an
answer. It uses plain Pillow, never the server's code, so it does not move
when the server gets faster: `overhead / reference` compares runs.

The **transport's CPU per frame** is the server CPU per frame, the same way,
for frames refused before any decoding (`top_k: 0`, the same bytes both
ways): receiving, parsing and answering a Socket.IO event, with no image and
no model. `overhead - transport` is then what the frame's own path costs:
decoding, hand-offs to native threads and back, batching, the answer's
contents.

Each row also has the p50 latency of a single client against the model's
batch-1 latency (`raw.batch1_latency_ms`), timed back to back and paced
(`raw.PACED_PAUSE_MS` between calls, as a lone client's frames arrive), and
the p50 of a frame refused before any decoding (`transport_floor_ms`).

`python -m webapp.bench.cpu TFLITE [--batch 8] [--threads 1] [--seconds 2]`
is the model measurement's subprocess; it prints one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time
from pathlib import Path

CLIENTS = 8

#: A typical answer, for the reference task's JSON round trip.
_ANSWER = {"id": 17, "model": "shapes", "version": "0123456789abcdef", "runtime": "litert",
           "labels": [{"label": name, "score": score} for name, score in
                      (("circle", 0.91), ("square", 0.05), ("triangle", 0.03), ("star", 0.01))],
           "timing": {"decode_ms": 0.4, "queue_ms": 0.2, "inference_ms": 0.5, "total_ms": 1.3, "batch_size": 4},
           "hint": {"interval_ms": 12}}


def reference_ms(image: bytes, repeats: int = 300) -> float:
    """CPU ms of the reference task (median of 3 rounds), on this thread only."""
    from PIL import Image

    def once() -> None:
        with Image.open(io.BytesIO(image)) as decoded:
            decoded.convert("RGB").resize((64, 64), Image.BILINEAR).tobytes()
        json.loads(json.dumps(_ANSWER))

    for _ in range(20):
        once()
    rounds = []
    for _ in range(3):
        started = time.thread_time()
        for _ in range(repeats):
            once()
        rounds.append((time.thread_time() - started) * 1000.0 / repeats)
    return round(sorted(rounds)[1], 4)


def model_cpu(tflite: Path, batch: int = 8, threads: int = 1, seconds: float = 2.0) -> dict:
    """The model's own CPU and wall time per frame, measured in a subprocess."""
    done = subprocess.run([sys.executable, "-m", "webapp.bench.cpu", str(tflite), "--batch", str(batch),
                           "--threads", str(threads), "--seconds", str(seconds)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure_model(tflite: Path, batch: int, threads: int, seconds: float) -> dict:
    import numpy as np

    from .raw import _interpreter

    interpreter, index = _interpreter(tflite, threads, batch)
    shape = interpreter.get_input_details()[0]["shape"]
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    for _ in range(3):
        interpreter.set_tensor(index, x)
        interpreter.invoke()
    frames, cpu_started, wall_started = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - wall_started < seconds:
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        frames += batch
    cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
    return {"batch": batch, "threads": threads, "frames": frames,
            "cpu_ms_per_frame": round(cpu * 1000.0 / frames, 4), "wall_ms_per_frame": round(wall * 1000.0 / frames, 4)}


def transport_floor_ms(url: str, model: str, image: bytes, frames: int = 200) -> float:
    """p50 round trip of one client's frame that is refused before any decoding
    (`top_k: 0`, answered `bad_request`): the same bytes both ways as a labelled
    frame, through the client library, Socket.IO and the server's event
    handling, with no model and no image work. What a lone client's latency
    cannot go below."""
    import statistics

    from . import load

    client = load._connect(url)
    try:
        refused = {"model": model, "image": image, "top_k": 0}
        for _ in range(20):
            client.call("frame", refused, timeout=60)
        times = []
        for _ in range(frames):
            started = time.perf_counter()
            client.call("frame", refused, timeout=60)
            times.append((time.perf_counter() - started) * 1000.0)
    finally:
        client.disconnect()
    return round(statistics.median(times), 3)


def transport_cpu_ms(url: str, pid: int, model: str, image: bytes, duration: float) -> float:
    """Server CPU per frame refused before any decoding, 8 clients in a closed loop."""
    from . import load, process

    refused = load.closed_loop(url, model, image, CLIENTS, duration, fields={"top_k": 0},
                               cpu_probe=lambda: process.tree_cpu_seconds(pid))
    return round(refused["server_cpu_s"] * 1000.0 / max(1, refused["answered"]), 3)


def server_row(url: str, pid: int, image: bytes, model: str, duration: float, model_cost: dict,
               batch1_ms: float | None, batch1_paced_ms: float | None = None) -> dict:
    """One row: 8 clients (server CPU per frame), then 1 client (p50)."""
    from . import load, process

    reference = reference_ms(image)
    loaded = load.closed_loop(url, model, image, CLIENTS, duration, cpu_probe=lambda: process.tree_cpu_seconds(pid))
    single = load.closed_loop(url, model, image, 1, max(1.0, duration / 2))
    floor = transport_floor_ms(url, model, image)
    transport = transport_cpu_ms(url, pid, model, image, max(1.0, duration / 2))
    server_ms = loaded["server_cpu_s"] * 1000.0 / max(1, loaded["frames"])
    overhead = server_ms - model_cost["cpu_ms_per_frame"]
    return {
        "model": model, "clients": CLIENTS, "frames": loaded["frames"], "fps": loaded["fps"],
        "p50": loaded["p50"], "p99": loaded["p99"], "errors": loaded["errors"] + single["errors"],
        "server_cpu_ms_per_frame": round(server_ms, 3),
        "model_cpu_ms_per_frame": model_cost["cpu_ms_per_frame"],
        "overhead_ms": round(overhead, 3),
        "reference_ms": reference,
        "overhead_per_reference": round(overhead / reference, 2),
        "transport_cpu_ms_per_frame": transport,
        "beyond_transport_ms": round(overhead - transport, 3),
        "single_client_p50": single["p50"],
        "batch1_latency_ms": batch1_ms,
        "single_client_excess_ms": round(single["p50"] - batch1_ms, 2) if batch1_ms and single["p50"] else None,
        "transport_floor_ms": floor,
        "batch1_paced_ms": batch1_paced_ms,
        "single_client_excess_paced_ms": (round(single["p50"] - batch1_paced_ms, 2)
                                          if batch1_paced_ms and single["p50"] else None),
        "rss_mb": round(process.tree_rss_mb(pid), 1),
    }


def format_rows(rows: list[dict]) -> str:
    lines = ["", "Server's own cost per 224x224 JPEG frame (8 clients, closed loop; CPU from /proc):", "",
             "| mode | server | model | runtime | fps | server CPU ms/frame | model CPU ms/frame | overhead ms "
             "| reference ms | overhead / reference | transport CPU ms/frame | overhead − transport ms | 1-client p50 ms | batch-1 ms | p50 − batch-1 ms "
             "| batch-1 paced ms | p50 − paced ms | refused-frame p50 ms | RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['server']} | {r['model']} | {r.get('runtime')} | {r['fps']} | {r['server_cpu_ms_per_frame']} | "
                     f"{r['model_cpu_ms_per_frame']} | **{r['overhead_ms']}** | {r['reference_ms']} | "
                     f"{r['overhead_per_reference']} | {r.get('transport_cpu_ms_per_frame')} | "
                     f"{r.get('beyond_transport_ms')} | {r['single_client_p50']} | {r['batch1_latency_ms']} | "
                     f"{r['single_client_excess_ms']} | {r.get('batch1_paced_ms')} | "
                     f"{r.get('single_client_excess_paced_ms')} | {r.get('transport_floor_ms')} | {r['rss_mb']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="the model's own CPU per frame (bare LiteRT)")
    parser.add_argument("tflite", type=Path)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    print(json.dumps(_measure_model(args.tflite, args.batch, args.threads, args.seconds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
