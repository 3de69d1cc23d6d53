"""`python -m webapp bench --hostile SECONDS`: normal clients beside hostile ones.

One server, configured as a 512 MB dyno (MEMORY_LIMIT_MB=512, so every
budget is derived as it would be there), serves four well-behaved clients
streaming 224x224 JPEGs at a fixed rate while, for SECONDS, hostile clients
do what issue 10 lists, each in a loop:

* `endless`: a WebSocket message that never ends (a first frame with FIN=0,
  then 1 MB continuation frames), reconnecting each time it is closed;
* `big_png`: four clients sending 6000x6000 single-colour PNGs (120 KB
  encoded, 144 MB decoded);
* `unknown`: frames naming random models;
* `slow_url`: eight concurrent image URLs whose host answers after 5 s;
* `bad_token`: Socket.IO connections with a wrong token;
* `silent`: TCP connections that open an Engine.IO session and never speak.

The report has the normal clients' latency percentiles and codes, the
server's RSS (first, max, last) against the limit, `/metrics` size before
and after, and what each hostile client got.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
import socketio
from PIL import Image

from . import load, process
from .run import jpeg, prepare_store, warm

LIMIT_MB = 512
TOKEN, ADMIN = "bench-token", "bench-admin"
NORMAL_CLIENTS, NORMAL_FPS = 4, 10.0


def hostile(seconds: float, mode: str, out: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix="webapp-hostile-"))
    slow_host = SlowImageHost()
    threading.Thread(target=slow_host.serve_forever, daemon=True).start()
    try:
        store, models, _ = prepare_store(work, quick=True)
        model, image = models[0], jpeg(224, 224)
        env = {"MODEL_STORE": str(store), "MODEL_CACHE_DIR": str(work / "cache"), "DEFAULT_MODEL": model,
               "LOG_LEVEL": "WARNING", "MEMORY_LIMIT_MB": str(LIMIT_MB), "URL_FETCH_ALLOW": "127.0.0.1",
               "PROJECT_TOKENS": json.dumps({TOKEN: ["*"]}), "ADMIN_TOKEN": ADMIN}
        proc, url = process.start_server(mode, env, work / "server.log")
        try:
            warm(url, model, image, auth={"token": TOKEN})
            metrics_before = _metrics_lines(url)
            stop_at = time.monotonic() + seconds
            results: dict[str, Counter] = {}
            attackers = {
                "endless": lambda c: _endless(url, stop_at, c),
                "big_png": lambda c: _big_pngs(url, model, stop_at, c),
                "unknown": lambda c: _unknown(url, stop_at, c),
                "slow_url": lambda c: _slow_urls(url, model, slow_host.url, stop_at, c),
                "bad_token": lambda c: _bad_tokens(url, stop_at, c),
                "silent": lambda c: _silent(url, stop_at, c),
            }
            # The normal clients connect first; the first RSS sample, taken once
            # they stream, lets the hostile ones loose.
            go = threading.Event()
            threads = []
            for name, attack in attackers.items():
                results[name] = Counter()
                threads.append(threading.Thread(target=_guarded, args=(attack, results[name], go), daemon=True))
            samples: list[float] = []
            started = time.monotonic()
            rss_series: list[tuple[float, float]] = []

            def sample_rss() -> float:
                go.set()
                rss = process.tree_rss_mb(proc.pid)
                samples.append(rss)
                rss_series.append((round(time.monotonic() - started, 1), round(rss, 1)))
                return rss

            for thread in threads:
                thread.start()
            normal = load.open_loop(url, model, image, NORMAL_CLIENTS, NORMAL_FPS, seconds, auth={"token": TOKEN},
                                    sample_rss=sample_rss)
            for thread in threads:
                thread.join(timeout=30)
            alive = proc.poll() is None
            metrics_after = _metrics_lines(url) if alive else None
        finally:
            process.stop(proc)
    finally:
        slow_host.release.set()
        slow_host.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    normal.pop("rss_mb", None)
    report = {"mode": mode, "seconds": seconds, "limit_mb": LIMIT_MB, "server_alive": alive,
              "normal": normal, "rss_mb": {"first": samples[0], "max": max(samples), "last": samples[-1],
                                           "samples": rss_series[::max(1, len(rss_series) // 30)]},
              "metrics_lines": {"before": metrics_before, "after": metrics_after},
              "hostile": {name: dict(counter) for name, counter in results.items()}}
    out.write_text(json.dumps(report, indent=2))
    print(format_hostile(report))
    print(f"\nreport: {out}")
    return report


def format_hostile(r: dict) -> str:
    n, rss = r["normal"], r["rss_mb"]
    lines = [
        f"hostile: {r['seconds']:.0f} s, {r['mode']}, limit {r['limit_mb']} MB, server alive: {r['server_alive']}",
        "| normal clients | sent | answered | errors | p50 ms | p99 ms | RSS MB first / max / last | /metrics lines |",
        "|---|---|---|---|---|---|---|---|",
        f"| {NORMAL_CLIENTS} x {NORMAL_FPS:.0f} fps | {n['sent']} | {n['answered']} | {n['errors']} "
        f"{n['error_codes'] or ''} | {n['p50']} | {n['p99']} | {rss['first']:.0f} / {rss['max']:.0f} / "
        f"{rss['last']:.0f} | {r['metrics_lines']['before']} -> {r['metrics_lines']['after']} |",
        "",
        "| hostile client | what it got |",
        "|---|---|",
    ]
    for name, got in r["hostile"].items():
        lines.append(f"| {name} | " + ", ".join(f"{k}: {v}" for k, v in sorted(got.items())) + " |")
    return "\n".join(lines)


def run(args) -> int:
    reports = [hostile(float(args.hostile), mode, Path(args.out).with_suffix(f".{mode}.json"))
               for mode in args.modes.split(",")]
    healthy = all(r["server_alive"] and r["normal"]["never_answered"] == 0 for r in reports)
    return 0 if healthy else 1


# -- the hostile clients -----------------------------------------------------------


def _guarded(attack, counter: Counter, go: threading.Event) -> None:
    go.wait()
    try:
        attack(counter)
    except Exception as exc:  # a bench client's own failure is reported, not raised
        counter[f"client crashed: {type(exc).__name__}"] += 1


def _metrics_lines(url: str) -> int:
    return requests.get(url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).text.count("\n")


def _websocket(url: str) -> socket.socket:
    host, port = url.split("//", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n"
                  f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the upgrade")
        reply += chunk
    if b" 101 " not in reply.split(b"\r\n", 1)[0]:
        raise ConnectionError(reply.split(b"\r\n", 1)[0].decode(errors="replace"))
    return sock


def ws_frame(payload: bytes, opcode: int, fin: bool) -> bytes:
    """A masked client WebSocket frame (RFC 6455 5.2)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    size = len(payload)
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + size.to_bytes(8, "big")
    # A zero mask keeps the bench's own CPU out of the measurement.
    mask = b"\0\0\0\0"
    return head + mask + payload


def _endless(url: str, stop_at: float, got: Counter) -> None:
    chunk = ws_frame(b"a" * (1 << 20), 0x0, False)
    while time.monotonic() < stop_at:
        sent = 0
        try:
            sock = _websocket(url)
            sock.sendall(ws_frame(b'4["frame",{"image":"', 0x1, False))
            while time.monotonic() < stop_at and sent < 512:
                sock.sendall(chunk)
                sent += 1
            got["still open at the end"] += 1
        except (OSError, ConnectionError):
            got["closed by the server"] += 1
            got["MB sent before close (max)"] = max(got["MB sent before close (max)"], sent)
        finally:
            try:
                sock.close()
            except Exception:
                pass


def _big_pngs(url: str, model: str, stop_at: float, got: Counter) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (6000, 6000), (200, 30, 30)).save(buffer, "PNG")
    png = buffer.getvalue()

    def one(_):
        client = socketio.Client(reconnection=False)
        client.connect(url, transports=["websocket"], auth={"token": TOKEN}, wait_timeout=30)
        try:
            while time.monotonic() < stop_at:
                answer = client.call("frame", {"model": model, "image": png}, timeout=120)
                got[answer.get("code", "label")] += 1
        finally:
            client.disconnect()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(4)))


def _unknown(url: str, stop_at: float, got: Counter) -> None:
    client = socketio.Client(reconnection=False)
    client.connect(url, transports=["websocket"], auth={"token": TOKEN}, wait_timeout=30)
    try:
        while time.monotonic() < stop_at:
            answer = client.call("frame", {"model": f"random-{uuid.uuid4().hex[:10]}", "image": b"x"}, timeout=60)
            got[answer.get("code", "label")] += 1
    finally:
        client.disconnect()


def _slow_urls(url: str, model: str, image_url: str, stop_at: float, got: Counter) -> None:
    def one(_):
        while time.monotonic() < stop_at:
            try:
                reply = requests.post(f"{url}/api/models/{model}/predict", json={"url": image_url},
                                      headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
                body = reply.json()
                got[body["error"]["code"] if "error" in body else "label"] += 1
            except (requests.RequestException, ValueError) as exc:
                got[type(exc).__name__] += 1

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(8)))


def _bad_tokens(url: str, stop_at: float, got: Counter) -> None:
    while time.monotonic() < stop_at:
        client = socketio.Client(reconnection=False)
        try:
            client.connect(url, transports=["websocket"], auth={"token": "wrong"}, wait_timeout=10)
            got["accepted"] += 1
            client.disconnect()
        except socketio.exceptions.ConnectionError:
            got["refused"] += 1
        time.sleep(0.05)


def _silent(url: str, stop_at: float, got: Counter) -> None:
    """Open an Engine.IO WebSocket, never send CONNECT; count how it ends."""
    while time.monotonic() < stop_at:
        try:
            sock = _websocket(url)
        except (OSError, ConnectionError):
            got["refused"] += 1
            time.sleep(1.0)
            continue
        sock.settimeout(max(0.5, stop_at - time.monotonic()))
        opened = time.monotonic()
        try:
            while sock.recv(65536):
                pass
            got["closed by the server"] += 1
            got["seconds until closed (max)"] = max(got["seconds until closed (max)"],
                                                    round(time.monotonic() - opened))
        except OSError:
            got["still open at the end"] += 1
        finally:
            sock.close()


class SlowImageHost(ThreadingHTTPServer):
    """A loopback host that holds every image request for `delay` seconds,
    or until `release` is set; `held` counts the requests it has received."""

    daemon_threads = True

    def __init__(self, delay: float = 5.0, colour=(20, 200, 20)):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), colour).save(buffer, "PNG")
        self.body, self.delay = buffer.getvalue(), delay
        self.release, self.held = threading.Event(), threading.Semaphore(0)
        super().__init__(("127.0.0.1", 0), _SlowHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/slow.png"


class _SlowHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.held.release()
        self.server.release.wait(self.server.delay)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, *args):
        pass
