"""A redis-server of the tests' own, on a free port: never the machine's 6379."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from serverproc import OwnedProcess, free_port


class RedisServer(OwnedProcess):
    """redis-server with nothing on disk, which a test may kill and restart."""

    def __init__(self, tmp_path: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tmp_path

    def start(self) -> "RedisServer":
        self.spawn(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                    "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        self.kill_group()
