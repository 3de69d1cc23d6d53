"""`python -m webapp bench --soak SECONDS`: steady load at 80% of capacity.

What a long run shows that a short benchmark cannot: memory that creeps up,
errors that appear only after minutes, and frames that are never answered.
It starts one server on the demo model, measures its capacity (closed loop,
4 clients), then sends at 80% of it from 8 clients at a fixed rate for
SECONDS, sampling the server's RSS. The report has RSS over time (one sample
every 10 s), answered/superseded/error counts by code, latency percentiles
and the frames never answered. At 80% of capacity nothing should be
superseded or refused; a few `superseded` frames are jitter, not failure.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from . import load, process
from .run import jpeg, prepare_store, warm

CLIENTS = 8
LOAD_FRACTION = 0.8


def soak(seconds: float, mode: str, out: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix="webapp-soak-"))
    try:
        store, models, _ = prepare_store(work, quick=True)
        model, image = models[0], jpeg(224, 224)
        env = {"MODEL_STORE": str(store), "MODEL_CACHE_DIR": str(work / "cache"), "DEFAULT_MODEL": model,
               "LOG_LEVEL": "WARNING"}
        proc, url = process.start_server(mode, env, work / "server.log")
        try:
            warm(url, model, image)
            capacity = load.closed_loop(url, model, image, 4, 5.0)["fps"]
            rate = LOAD_FRACTION * capacity / CLIENTS
            print(f"capacity {capacity} frames/s; soaking at {LOAD_FRACTION:.0%} ({rate * CLIENTS:.0f} frames/s "
                  f"from {CLIENTS} clients) for {seconds:.0f} s", flush=True)
            started = time.monotonic()
            samples: list[tuple[float, float]] = []

            def sample_rss() -> float:
                rss = process.tree_rss_mb(proc.pid)
                samples.append((round(time.monotonic() - started, 1), round(rss, 1)))
                return rss

            row = load.open_loop(url, model, image, CLIENTS, rate, seconds, sample_rss=sample_rss)
            alive = proc.poll() is None
            log_tail = (work / "server.log").read_text(errors="replace")[-3000:]
        finally:
            process.stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    row.pop("rss_mb")
    every_10s = [s for i, s in enumerate(samples) if i % 20 == 0] + samples[-1:]
    rss = [mb for _, mb in samples]
    report = {"mode": mode, "model": model, "seconds": seconds, "capacity_fps": capacity,
              "offered_fps": round(rate * CLIENTS, 1), **row,
              "rss_mb": {"first": rss[0], "max": max(rss), "last": rss[-1], "samples": every_10s},
              "server_alive": alive, "server_log_tail": log_tail if row["errors"] else ""}
    out.write_text(json.dumps(report, indent=2))
    print(format_soak(report))
    print(f"\nreport: {out}")
    return report


def format_soak(r: dict) -> str:
    rss = r["rss_mb"]
    lines = [
        f"soak: {r['seconds']:.0f} s, {r['mode']}, model {r['model']}, capacity {r['capacity_fps']} fps, "
        f"offered {r['offered_fps']} fps ({CLIENTS} clients)",
        "| sent | answered | superseded | errors | never answered | p50 ms | p95 ms | p99 ms "
        "| RSS MB first / max / last |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['sent']} | {r['answered']} | {r['superseded']} | {r['errors']} {r['error_codes'] or ''} "
        f"| {r['never_answered']} | {r['p50']} | {r['p95']} | {r['p99']} "
        f"| {rss['first']} / {rss['max']} / {rss['last']} |",
        "RSS over time (s, MB): " + ", ".join(f"{t:.0f}: {mb:.0f}" for t, mb in rss["samples"]),
    ]
    return "\n".join(lines)


def run(args) -> int:
    report = soak(float(args.soak), args.modes.split(",")[0], Path(args.out))
    healthy = report["server_alive"] and report["never_answered"] == 0 and report["errors"] == 0
    return 0 if healthy else 1
