"""Run the real server as a subprocess and talk to it like a user would."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
import socketio

ROOT = Path(__file__).resolve().parent.parent


def rss_bytes(pid: int) -> int:
    """A process's resident memory, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, timeout: float, still_starting) -> bool:
    """Poll `url`/healthz until it answers 200 (True) or `timeout` passes (False).

    `still_starting()` is called before each try and raises if the server
    died meanwhile, so a crash is reported at once with its log.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        still_starting()
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return True
        except requests.RequestException:
            pass
        time.sleep(0.1)
    return False


class OwnedProcess:
    """A process the tests started: owned from the moment it is spawned.

    It runs in its own process group, so stopping it also stops what it
    started (gunicorn's worker). Every one still alive when the session ends
    is killed there and fails the run (conftest.py), so a test that forgets
    to stop one, or fails before it could, is caught instead of leaking.
    """

    live: set["OwnedProcess"] = set()

    proc: subprocess.Popen | None = None

    def spawn(self, command: list[str], **kwargs) -> subprocess.Popen:
        self.proc = subprocess.Popen(command, start_new_session=True, **kwargs)
        OwnedProcess.live.add(self)
        return self.proc

    def kill_group(self, sig=signal.SIGKILL) -> None:
        if self.proc is not None:
            try:  # even if the leader is gone: what it started may remain in its group
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(10)
        OwnedProcess.live.discard(self)

    def group_alive(self) -> bool:
        """Whether the process or anything in its group is still running."""
        if self.proc is None:
            return False
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.kill_group()


class ServerProcess(OwnedProcess):
    """`python -m webapp serve` on a free loopback port."""

    def __init__(self, async_mode: str = "eventlet", env: dict | None = None, log_dir: Path | None = None,
                 command: list[str] | None = None):
        self.async_mode = async_mode
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "HOST": "127.0.0.1", "PORT": str(self.port),
                    "ASYNC_MODE": async_mode, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.command = command or [sys.executable, "-m", "webapp", "serve"]
        self.log_path = (log_dir or Path("/tmp")) / f"server-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "ServerProcess":
        self._log = open(self.log_path, "wb")
        self.spawn(self.command, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)

        def still_starting():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")

        try:
            if wait_for_health(self.url, timeout, still_starting):
                return self
            raise RuntimeError(f"server did not answer /healthz in {timeout}s:\n{self.log()}")
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait for /readyz; a server that never gets ready is stopped, then reported."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        log = self.log()
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s:\n{log}")

    @property
    def serving_pid(self) -> int:
        """The process that holds connections and models: the server itself
        (eventlet), or gunicorn's one worker (threading)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(children[0]) if children else self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig=signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int | None:
        """SIGTERM (the server drains), then SIGKILL to the whole group after 15 s."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        returncode = self.proc.returncode
        self.kill_group()  # and anything it left in its group
        self._log.close()
        return returncode

    def client(self, **kwargs) -> "Client":
        return Client(self.url, **kwargs)


class Client:
    """A python-socketio client that records every event the server sends."""

    EVENTS = ("label", "error", "model_status", "models", "prediction", "monitoring", "status")

    def __init__(self, url: str, transports=("websocket",), auth=None, headers=None):
        self.sio = socketio.Client(reconnection=False)
        self.events: dict[str, queue.Queue] = {name: queue.Queue() for name in self.EVENTS}
        for name in self.EVENTS:
            self.sio.on(name, self._recorder(name))
        self.sio.connect(url, transports=list(transports), auth=auth, headers=headers or {},
                         wait_timeout=10)

    def _recorder(self, name):
        def record(data=None):
            self.events[name].put(data)
        return record

    def next(self, event: str, timeout: float = 30.0):
        return self.events[event].get(timeout=timeout)

    def drain(self, event: str) -> list:
        items = []
        while True:
            try:
                items.append(self.events[event].get_nowait())
            except queue.Empty:
                return items

    def emit(self, event: str, data=None):
        self.sio.emit(event, data)

    def call(self, event: str, data=None, timeout: float = 60.0):
        return self.sio.call(event, data, timeout=timeout)

    @property
    def connected(self) -> bool:
        return self.sio.connected

    def close(self):
        if self.sio.connected:
            self.sio.disconnect()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
