"""The benchmark's phases, in order, and its report (see the package docstring)."""

from __future__ import annotations

import io
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import socketio
from PIL import Image

from ..config import PROJECT_ROOT
from . import cpu, load, process, raw


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A webcam-like frame: smooth shapes plus noise, so JPEG size is realistic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = (np.sin(x / 37.0) + np.cos(y / 23.0)) * 60 + 128
    pixels = np.stack([base, base[::-1], base[:, ::-1]], -1) + rng.normal(0, 12, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def warm(url: str, model: str, image: bytes, auth: dict | None = None) -> str:
    """Three frames, so the model is loaded and its interpreters built; the `runtime` that answered."""
    client = socketio.Client()
    client.connect(url, transports=["websocket"], auth=auth, wait_timeout=180)
    for _ in range(3):
        answer = client.call("frame", {"model": model, "image": image}, timeout=600)
        if "code" in answer:
            raise RuntimeError(f"warm-up frame failed: {answer}")
    client.disconnect()
    return answer.get("runtime", "")


def _batch1(tflite: Path, paced: bool = False) -> float:
    """The model's batch-1 latency, best of 1 and 2 threads; `paced`: calls
    spaced as a lone client's frames arrive (`raw.PACED_PAUSE_MS`)."""
    pause = raw.PACED_PAUSE_MS if paced else 0.0
    return round(min(raw.batch1_latency_ms(tflite, t, pause_ms=pause) for t in (1, 2)), 2)


def prepare_store(work: Path, quick: bool, int8: bool = False,
                  wanted: list[str] | None = None) -> tuple[Path, list[str], dict]:
    """The demo model, plus MobileNetV2 (and its int8 version) unless quick or not `wanted`."""
    store = work / "store"
    store.mkdir()
    shutil.copytree(PROJECT_ROOT / "models" / "shapes", store / "shapes")
    info = {}
    models = ["shapes"]
    if not quick and (wanted is None or any(name.startswith("mobilenetv2") for name in wanted)):
        command = [sys.executable, "-m", "webapp.bench.build_models", str(store)] + (["--int8"] if int8 else [])
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        info = json.loads(done.stdout.strip().splitlines()[-1])
        models.insert(0, "mobilenetv2")
        if int8:
            models.insert(1, "mobilenetv2-int8")
    if wanted is not None:
        models = [name for name in models if name in wanted]
    return store, models, info


def run(args) -> int:
    quick = args.quick
    cpu_only = getattr(args, "cpu_only", False)
    modes = args.modes.split(",")
    client_counts = [1, 4] if quick else [int(n) for n in args.clients.split(",")]
    duration = 1.5 if quick else args.duration
    frames = {"224x224": jpeg(224, 224), "640x480": jpeg(640, 480)}
    compare = Path(args.compare).resolve() if getattr(args, "compare", None) else None
    report = {"machine": {"python": platform.python_version(), "cpus": _cpus(), "platform": platform.platform()},
              "command": " ".join(["python -m webapp bench", *sys.argv[2:]]), "quick": quick,
              "limits": {}, "model_cpu": {}, "model_cpu_float": {}, "cpu": [], "server": [], "naive": [], "overload": [],
              "memory": None, "cold_start": None}
    work = Path(tempfile.mkdtemp(prefix="webapp-bench-"))
    try:
        wanted = args.models.split(",") if getattr(args, "models", None) else None
        store, models, built = prepare_store(work, quick, int8=getattr(args, "int8", False), wanted=wanted)
        report["models"] = {"built": built}
        batch1: dict[str, float] = {}
        batch1_paced: dict[str, float] = {}
        for model in models:
            tflite = store / model / "model.tflite"
            if (store / model / "model.int8.tflite").is_file():
                tflite = store / model / "model.int8.tflite"  # what the server serves
            if not cpu_only:
                report["limits"][model] = raw.raw_limit(tflite, 0.5 if quick else 2.0, quick)
                _say(f"raw limit {model}: {report['limits'][model]['best']}")
                batch1[model] = report["limits"][model]["batch1_latency_ms"]
            else:
                batch1[model] = _batch1(tflite)
            batch1_paced[model] = _batch1(tflite, paced=True)
            report["model_cpu"][model] = cpu.model_cpu(tflite, seconds=1.0 if quick else 3.0)
            _say(f"model CPU {model}: {report['model_cpu'][model]}")
            if tflite.name == "model.int8.tflite" and (store / model / "model.tflite").is_file():
                # A server may answer with the float file (`SERVE_INT8=false`, or
                # `--compare`'s code from before int8): its row is measured against it.
                float_file = store / model / "model.tflite"
                report["model_cpu_float"][model] = {
                    **cpu.model_cpu(float_file, seconds=1.0 if quick else 3.0),
                    "batch1_latency_ms": _batch1(float_file), "batch1_paced_ms": _batch1(float_file, paced=True)}
                _say(f"model CPU {model}, float file: {report['model_cpu_float'][model]}")
        if getattr(args, "int8", False) and not quick:
            report["compiled"] = _compiled(store, models)
        for mode in modes:
            report["cpu"].extend(_cpu_phase(store, work, mode, models, frames["224x224"], duration, report,
                                            batch1, batch1_paced, compare, 1 if quick else args.rounds))
            if not quick and mode == modes[0] and "mobilenetv2" in models:
                report["memory"] = _memory(store, work, mode, frames["224x224"])
                if "mobilenetv2-int8" in models:
                    report["memory_int8"] = _memory(store, work, mode, frames["224x224"], "mobilenetv2-int8")
                    # One malloc arena per native thread is where ~12 MB of it went
                    # (measured); the process-level lever, shown beside the default.
                    report["memory_int8_arenas"] = _memory(store, work, mode, frames["224x224"], "mobilenetv2-int8",
                                                           env={"MALLOC_ARENA_MAX": "2"})
            if cpu_only:
                continue
            env = {"MODEL_STORE": str(store), "MODEL_CACHE_DIR": str(work / f"cache-{mode}"),
                   "DEFAULT_MODEL": models[0], "LOG_LEVEL": "WARNING"}
            proc, url = process.start_server(mode, env, work / f"server-{mode}.log")
            try:
                for model in models:
                    warm(url, model, frames["224x224"])
                    for size, image in frames.items():
                        for clients in client_counts:
                            row = load.closed_loop(url, model, image, clients, duration)
                            row.update(mode=mode, model=model, frame=size, rss_mb=round(process.tree_rss_mb(proc.pid), 1))
                            report["server"].append(row)
                            _say(f"server {mode} {model} {size} x{clients}: {row['fps']} fps p50 {row['p50']} ms")
                report["overload"].append(_overload(url, proc, mode, models[0], frames["224x224"], report, duration))
            finally:
                process.stop(proc)
            # The naive design loads one model copy per client; past 8 clients it
            # only measures swapping, so it stops there.
            naive_clients = [n for n in client_counts if n <= 8]
            report["naive"].extend(_naive(store, mode, models[0], frames["224x224"], naive_clients, duration, work))
        if not quick and not cpu_only:
            report["cold_start"] = _cold_start(store, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _ratios(report)
    out = Path(args.out)
    out.write_text(json.dumps(report, indent=2))
    print(format_table(report))
    print(f"\nreport: {out}")
    return 0


def _cpu_phase(store, work, mode, models, image, duration, report, batch1, batch1_paced, compare,
               rounds) -> list[dict]:
    """Server CPU per frame for each model (and for `compare`'s code, if given).

    `batch1`, `batch1_paced`: each model's batch-1 latency, back to back and paced.

    The servers run side by side and are measured in alternation, `rounds`
    times, keeping the median row: on a shared machine whose speed drifts, a
    before/after comparison is only fair when both see the same minutes.
    """
    servers = [("this", None)] + ([("before", compare)] if compare else [])
    started = []
    served: dict[tuple, str] = {}  # (server, model): the runtime that answered
    try:
        for label, root in servers:
            env = {"MODEL_STORE": str(store), "MODEL_CACHE_DIR": str(work / f"cache-cpu-{mode}-{label}"),
                   "DEFAULT_MODEL": models[0], "LOG_LEVEL": "WARNING"}
            proc, url = process.start_server(mode, env, work / f"server-cpu-{mode}-{label}.log", root=root)
            started.append((label, proc, url))
            for model in models:
                served[(label, model)] = warm(url, model, image)
        measured: dict[tuple, list[dict]] = {}
        for _ in range(rounds):
            for model in models:
                for label, proc, url in started:
                    if label == "before" and model.endswith("-int8"):
                        continue  # an int8-only model: compared against float in this server's own rows
                    runtime = served[(label, model)]
                    cost, b1, paced = report["model_cpu"][model], batch1.get(model), batch1_paced.get(model)
                    if runtime != "litert-int8" and model in report["model_cpu_float"]:
                        cost = report["model_cpu_float"][model]
                        b1, paced = cost["batch1_latency_ms"], cost["batch1_paced_ms"]
                    row = cpu.server_row(url, proc.pid, image, model, duration, cost, b1, paced)
                    row.update(mode=mode, server=label, runtime=runtime)
                    measured.setdefault((label, model), []).append(row)
                    _say(f"cpu {mode} {label} {model}: {row['server_cpu_ms_per_frame']} ms/frame, overhead "
                         f"{row['overhead_ms']} ms ({row['overhead_per_reference']} x reference), {row['fps']} fps")
    finally:
        for _, proc, _ in started:
            process.stop(proc)
    rows = []
    for model in models:
        for label, _ in servers:
            if (label, model) not in measured:
                continue
            candidates = sorted(measured[(label, model)], key=lambda r: r["overhead_per_reference"])
            median = dict(candidates[len(candidates) // 2])
            median["rounds"] = len(candidates)
            rows.append(median)
    return rows


def _overload(url, proc, mode, model, image, report, duration) -> dict:
    capacity = max(r["fps"] for r in report["server"] if r["mode"] == mode and r["model"] == model
                   and r["frame"] == "224x224")
    clients = 8
    row = load.open_loop(url, model, image, clients, rate=2 * capacity / clients, duration=duration * 2,
                         sample_rss=lambda: process.tree_rss_mb(proc.pid))
    row.update(mode=mode, model=model, capacity_fps=capacity)
    _say(f"overload {mode}: p50 {row['p50']} p99 {row['p99']} superseded {row['superseded']}")
    return row


def _compiled(store: Path, models: list[str]) -> list[dict]:
    """LiteRT's CompiledModel against the Interpreter for every served file, batch 1 and 8, 1 thread."""
    from . import compiled

    rows = []
    for model in models:
        folder = store / model
        files = [folder / "model.tflite"] + ([folder / "model.int8.tflite"] if model == "shapes" else [])
        if model.endswith("-int8"):
            files = [folder / "model.int8.tflite"]
        for tflite in files:
            if not tflite.is_file():
                continue
            for batch in (1, 8):
                row = compiled.compare(tflite, batch, threads=1, seconds=2.0, rounds=3)
                rows.append(row)
                _say(f"compiled {row['model']} batch {batch}: {row.get('compiled_vs_interpreter')} x the Interpreter")
    return rows


def _memory(store, work, mode, image, base: str = "mobilenetv2", env: dict | None = None) -> dict:
    """A fresh server with three MobileNetV2-size models loaded and used (`base` and its copies)."""
    extra = env or {}
    label = base + "".join(f"-{key}" for key in extra)
    env = {"MODEL_STORE": str(store), "MODEL_CACHE_DIR": str(work / f"cache-memory-{label}"), "DEFAULT_MODEL": "",
           "LOG_LEVEL": "WARNING", **extra}
    proc, url = process.start_server(mode, env, work / f"memory-{label}.log")
    try:
        idle = process.tree_rss_mb(proc.pid)
        for name in (base, f"{base}-2", f"{base}-3"):
            warm(url, name, image)
        rss = process.tree_rss_mb(proc.pid)
    finally:
        process.stop(proc)
    _say(f"RSS with three {base} on LiteRT {extra or ''}: {rss:.0f} MB (idle {idle:.0f} MB)")
    return {"models_loaded": 3, "model": base, "rss_mb": round(rss, 1), "idle_rss_mb": round(idle, 1), "mode": mode,
            **({"env": extra} if extra else {})}


def _naive(store, mode, model, image, client_counts, duration, work) -> list[dict]:
    port = process.free_port()
    command = [sys.executable, "-m", "webapp.bench.naive_server", "--port", str(port),
               "--model", str(store / model / "model.keras"), "--async-mode", mode]
    proc = process.start(command, {}, work / f"naive-{mode}.log", port)
    rows = []
    try:
        url = f"http://127.0.0.1:{port}"
        warm(url, model, image)
        for clients in client_counts:
            row = load.closed_loop(url, model, image, clients, duration)
            row.update(mode=mode, model=model, frame="224x224", rss_mb=round(process.tree_rss_mb(proc.pid), 1))
            rows.append(row)
            _say(f"naive {mode} {model} x{clients}: {row['fps']} fps p50 {row['p50']} ms")
    finally:
        process.stop(proc)
    return rows


def _cold_start(store: Path, work: Path) -> dict | None:
    """Time to first label for an uncached model from S3, against download + load."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        return {"skipped": "moto is not installed (make test installs it)"}
    port = process.free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    s3.start()
    creds = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")
        client.create_bucket(Bucket="bench")
        folder = store / "mobilenetv2"
        for path in folder.iterdir():
            client.upload_file(str(path), "bench", f"models/cold/{path.name}")
        started = time.perf_counter()
        scratch = work / "download"
        scratch.mkdir()
        for path in folder.iterdir():
            client.download_file("bench", f"models/cold/{path.name}", str(scratch / path.name))
        download_s = time.perf_counter() - started
        started = time.perf_counter()
        from ..models.runtime.litert_runtime import LiteRTRuntime

        runtime = LiteRTRuntime(scratch / "model.tflite")
        runtime.predict(np.zeros((1, *runtime.input_shape), np.float32))
        load_s = time.perf_counter() - started
        env = {**creds, "S3_ENDPOINT_URL": endpoint, "MODEL_STORE": "s3://bench/models",
               "MODEL_CACHE_DIR": str(work / "cold-cache"), "DEFAULT_MODEL": "", "LOG_LEVEL": "WARNING"}
        proc, url = process.start_server("eventlet", env, work / "cold.log")
        try:
            sio = socketio.Client()
            sio.connect(url, transports=["websocket"])
            started = time.perf_counter()
            answer = sio.call("frame", {"model": "cold", "image": jpeg(224, 224)}, timeout=600)
            first_label_s = time.perf_counter() - started
            sio.disconnect()
        finally:
            process.stop(proc)
        size = sum(p.stat().st_size for p in folder.iterdir())
        result = {"model_mb": round(size / 1e6, 1), "download_s": round(download_s, 3), "load_s": round(load_s, 3),
                  "first_label_s": round(first_label_s, 3), "ok": "labels" in answer,
                  "ratio": round(first_label_s / (download_s + load_s), 2)}
        _say(f"cold start: {result}")
        return result
    finally:
        s3.stop()


def _ratios(report: dict) -> None:
    naive = {(r["mode"], r["clients"]): r["fps"] for r in report["naive"]}
    for row in report["server"]:
        limit = report["limits"].get(row["model"], {}).get("best", {}).get("fps")
        row["vs_limit"] = round(row["fps"] / limit, 2) if limit else None
        base = naive.get((row["mode"], row["clients"])) if row["frame"] == "224x224" and \
            row["model"] == (report["naive"][0]["model"] if report["naive"] else None) else None
        row["vs_naive"] = round(row["fps"] / base, 1) if base else None


def format_table(report: dict) -> str:
    lines = [cpu.format_rows(report["cpu"]),
             "", "| mode | model | frame | clients | fps | p50 ms | p95 ms | p99 ms | superseded | RSS MB | ×limit | ×naive |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["server"]:
        lines.append(f"| {r['mode']} | {r['model']} | {r['frame']} | {r['clients']} | {r['fps']} | {r['p50']} | "
                     f"{r['p95']} | {r['p99']} | {r['superseded']} | {r['rss_mb']} | {r['vs_limit']} | {r['vs_naive']} |")
    lines += ["", "| naive | model | clients | fps | p50 ms | p99 ms | RSS MB |", "|---|---|---|---|---|---|---|"]
    for r in report["naive"]:
        lines.append(f"| {r['mode']} | {r['model']} | {r['clients']} | {r['fps']} | {r['p50']} | {r['p99']} | {r['rss_mb']} |")
    lines += ["", "| overload | model | capacity fps | sent | answered | p50 ms | p99 ms | superseded | never answered | RSS MB (first→last) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["overload"]:
        rss = f"{r['rss_mb'][0]}→{r['rss_mb'][-1]}" if r["rss_mb"] else "-"
        lines.append(f"| {r['mode']} | {r['model']} | {r['capacity_fps']} | {r['sent']} | {r['answered']} | {r['p50']} | "
                     f"{r['p99']} | {r['superseded']} | {r['never_answered']} | {rss} |")
    lines.append("")
    for model, limit in report["limits"].items():
        lines.append(f"raw limit {model}: {limit['best']['fps']} frames/s at batch {limit['best']['batch']}, "
                     f"{limit['best']['threads']} thread(s) x {limit['best']['interpreters']} interpreter(s); "
                     f"batch-1 latency {limit['batch1_latency_ms']} ms")
    if report.get("memory"):
        lines.append(f"RSS with three MobileNetV2 models loaded (LiteRT): {report['memory']['rss_mb']} MB")
    if report.get("memory_int8"):
        lines.append(f"RSS with three MobileNetV2 int8 models loaded (LiteRT): {report['memory_int8']['rss_mb']} MB")
    if report.get("memory_int8_arenas"):
        lines.append(f"  the same with MALLOC_ARENA_MAX=2: {report['memory_int8_arenas']['rss_mb']} MB")
    if report.get("compiled"):
        lines += ["", "| LiteRT file | batch | Interpreter ms/frame | CompiledModel ms/frame | Interpreter CPU ms/frame "
                  "| CompiledModel CPU ms/frame | CompiledModel / Interpreter |", "|---|---|---|---|---|---|---|"]
        for r in report["compiled"]:
            i, c = r["interpreter"], r["compiled"]
            lines.append(f"| {r['model']} | {r['batch']} | {i.get('ms_per_frame')} | {c.get('ms_per_frame')} | "
                         f"{i.get('cpu_ms_per_frame')} | {c.get('cpu_ms_per_frame')} | {r.get('compiled_vs_interpreter')} |")
    if report.get("cold_start"):
        lines.append(f"cold start from S3: {report['cold_start']}")
    return "\n".join(lines)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
