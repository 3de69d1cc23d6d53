"""`python -m webapp.bench.profile [--mode eventlet] [--seconds 12] [--out DIR]`: where the server's time goes.

Starts a server on the demo model, puts 8 closed-loop clients on it (224x224
JPEGs) and records it with py-spy (a sampling profiler, `requirements/test.in`;
it reads another process's memory, so it needs root or ptrace rights). It
writes py-spy's raw samples (collapsed stacks, for flame graphs) and prints
the share of active samples per part of the server. Samples of threads that
are waiting (a tpool thread's queue, the hub's `epoll`) are left out: they
cost no CPU. py-spy also counts a thread waiting for the GIL as active, so
it prints, beside the shares, the server CPU per frame of each of its
threads from /proc (`utime + stime`): the event loop (eventlet's main
thread), the others, and threads that ended during the run (threading mode
starts one per Socket.IO event).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from . import load, process
from .run import jpeg, prepare_store, warm

#: Leaf frames of a waiting thread (py-spy --nonblocking can sample them as active).
#: simple-websocket's reader loop is a leaf only inside its blocking `recv`/`select`
#: (its parsing is in wsproto, deeper frames).
_WAITING = ("Condition.wait", "Hub.do_poll", "Hub.wait (eventlet/hubs/poll.py", "Event.wait", "_wait_for_tstate_lock",
            "Base._thread (simple_websocket/ws.py",
            "FrameThreads._work (")  # a frame thread's leaf is its queue's C `get`: waiting

#: Work named by the webapp function it runs under, anywhere in the stack.
_OWNED = (
    ("LiteRT invoke", ("Interpreter.invoke",)),
    ("libjpeg-turbo: plain JPEG decode (plain_jpeg.decode)", ("decode (webapp/frames/plain_jpeg.py",)),
    ("Pillow: decode (load_image)", ("load_image (",)),
    ("Pillow: reduce, convert, crop, resize (to_pixels, _fit)", ("to_pixels (", "_fit (")),
    ("Pillow: wrap decoded pixels (fromarray)", ("_plain_pixels (",)),
    ("header (probe_image)", ("probe_image (",)),
    ("numpy: normalise, stack", ("normalise (", "_stack_and_run (")),
)
#: Everything else, named by the innermost frame that matches.
_LIBRARIES = (
    ("tpool hand-offs", ("eventlet/tpool.py",)),
    ("socket send/recv (system calls)", ("_send_loop", "_recv_loop", "sendall", "recv_into")),
    ("JSON", ("json/",)),
    ("prometheus metrics", ("prometheus_client",)),
    ("Socket.IO / Engine.IO / WebSocket", ("socketio/", "engineio/", "websocket", "wsproto")),
    ("Flask / werkzeug", ("flask/", "werkzeug/")),
    ("gunicorn", ("gunicorn/",)),
    ("threading hand-offs (locks, events)", ("threading.py", "queue.py")),
    ("eventlet hub, green threads", ("eventlet/", "greenlet")),
    ("webapp (data plane, scheduler, events)", ("webapp/",)),
)


def _part(frames: list[str]) -> str:
    joined = ";".join(frames)
    for part, pieces in _OWNED:
        if any(piece in joined for piece in pieces):
            return part
    for frame in reversed(frames):
        for part, pieces in _LIBRARIES:
            if any(piece in frame for piece in pieces):
                return part
    return "other"


def summarise(raw: Path) -> list[tuple[str, float]]:
    parts: Counter = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[1:]
        if not frames or frames[-1].startswith(_WAITING):
            continue
        total += int(count)
        parts[_part(frames)] += int(count)
    return [(part, round(100.0 * n / total, 1)) for part, n in parts.most_common()] if total else []


def profile(mode: str, seconds: float, out: Path, root: Path | None = None) -> list[tuple[str, float]]:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="webapp-profile-"))
    image = jpeg(224, 224)
    try:
        store, _, _ = prepare_store(work, quick=True)
        env = {"MODEL_STORE": str(store), "MODEL_CACHE_DIR": str(work / "cache"), "DEFAULT_MODEL": "shapes",
               "LOG_LEVEL": "WARNING"}
        proc, url = process.start_server(mode, env, work / "server.log", root=root)
        try:
            warm(url, "shapes", image)
            target = process._tree(proc.pid)[-1]  # gunicorn's worker in threading mode
            raw = out / f"profile-{mode}{'-' + root.name if root else ''}.txt"
            spy_binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            spy = subprocess.Popen([spy_binary, "record", "--pid", str(target), "--duration", str(int(seconds)),
                                    "--rate", "250", "--format", "raw", "--nonblocking", "--threads",
                                    "-o", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)
            threads = []  # each thread's CPU, read when the load's own CPU probe is read

            def cpu_probe() -> float:
                threads.append(process.thread_cpu_seconds(target))
                return process.tree_cpu_seconds(target)

            row = load.closed_loop(url, "shapes", image, 8, seconds, cpu_probe=cpu_probe)
            per_thread = _cpu_per_frame(threads[0], threads[-1], row["server_cpu_s"], target, row["frames"])
            spy.wait(timeout=seconds + 60)
            if spy.returncode != 0:
                raise RuntimeError(f"py-spy failed: {spy.stderr.read().decode(errors='replace')[-500:]}")
        finally:
            process.stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    shares = summarise(raw)
    print(f"{mode}: {row['fps']} fps under 8 clients; active samples by part ({raw}):")
    for part, share in shares:
        print(f"  {share:5.1f}%  {part}")
    print("server CPU per frame by thread (/proc):")
    for name, ms in per_thread:
        print(f"  {ms:6.3f} ms  {name}")
    return shares


def _cpu_per_frame(before: dict, after: dict, total: float, pid: int, frames: int) -> list[tuple[str, float]]:
    """ms per frame: the main thread (eventlet's event loop), each other busy thread, and ended threads."""
    frames = max(1, frames)
    spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    rows = [("main thread (eventlet: the event loop)", spent.pop(pid, 0.0))]
    rows += [(f"thread {tid}", cpu) for tid, cpu in sorted(spent.items(), key=lambda item: -item[1]) if cpu > 0]
    rows.append(("threads that ended during the run", max(0.0, total - sum(cpu for _, cpu in rows))))
    return [(name, round(cpu * 1000.0 / frames, 3)) for name, cpu in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="eventlet")
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--root", type=Path, help="profile another checkout's server (before/after)")
    args = parser.parse_args(argv)
    profile(args.mode, args.seconds, args.out, args.root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
