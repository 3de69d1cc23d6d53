"""Start servers for the benchmark and read their memory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str], env: dict, log_path: Path, port: int, timeout: float = 120.0,
          cwd: Path | None = None) -> subprocess.Popen:
    log = open(log_path, "wb")
    # Its own process group: `stop` ends gunicorn's worker with its master.
    proc = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            stop(proc)
            raise RuntimeError(f"{command} exited; see {log_path}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"{command} did not start; see {log_path}")


def start_server(async_mode: str, env: dict, log_path: Path, root: Path | None = None) -> tuple[subprocess.Popen, str]:
    """`webapp serve` on a free port; `root`: run another checkout's code (the bench's `--compare`)."""
    port = free_port()
    env = {"HOST": "127.0.0.1", "PORT": str(port), "ASYNC_MODE": async_mode, **env}
    if root is not None:
        env["PYTHONPATH"] = str(root)
    proc = start([sys.executable, "-m", "webapp", "serve"], env, log_path, port, cwd=root)
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the server drains), then SIGKILL to its whole group: nothing it started outlives it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _tree(pid: int) -> list[int]:
    """A process and all its descendants (gunicorn's worker, in threading mode)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        found.append(current)
        stack.extend(children.get(current, []))
    return found


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (gunicorn's worker), in MB."""
    total = 0
    for current in _tree(pid):
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024.0


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants, in seconds.

    From /proc/<pid>/stat (utime, stime: every thread of the process, so the
    LiteRT and tpool threads count too). Resolution is one clock tick (10 ms):
    measure over thousands of frames.
    """
    return sum(stat_cpu_seconds(Path(f"/proc/{current}/stat")) for current in _tree(pid))


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU seconds of each live thread of a process (`/proc/<pid>/task`)."""
    return {int(task.name): stat_cpu_seconds(task / "stat") for task in Path(f"/proc/{pid}/task").iterdir()}


def stat_cpu_seconds(stat: Path) -> float:
    """utime + stime from a process's or thread's `stat` file; 0 once it has ended."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # fields 14, 15 of stat
    except (OSError, IndexError, ValueError):
        return 0.0
