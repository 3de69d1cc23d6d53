"""`python -m webapp stream` shows a progress bar on stderr, and only there.

The bar is for a person at a terminal (tqdm draws it when stderr is a
terminal), so stderr here is a pseudo-terminal, as in a shell, while stdout
is a pipe, as when the JSON lines are redirected to a file: the bar must
count every frame on the terminal and never mix into the JSON.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading


from images import encode, shape_image
from serverproc import ROOT

FRAMES = 6


# `server`: the session's server in each async mode (tests/conftest.py).
def read_all(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side closed
            return
        if not chunk:
            return
        into.append(chunk)


def test_stream_draws_a_progress_bar_on_stderr_only(server, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(FRAMES):
        (frames / f"{i:03}.jpg").write_bytes(encode(shape_image("square", seed=70 + i, size=(200, 150))))
    master, slave = pty.openpty()
    # A terminal 100 columns wide (a new pty is 0x0, where tqdm draws nothing).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    terminal: list[bytes] = []
    try:
        done = subprocess.Popen([sys.executable, "-m", "webapp", "stream", "--server", server.url,
                                 "--model", "shapes", "--fps", "20", str(frames)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
        os.close(slave)
        slave = None
        reader = threading.Thread(target=read_all, args=(master, terminal), daemon=True)
        reader.start()
        stdout, _ = done.communicate(timeout=120)
        reader.join(timeout=10)
    finally:
        if slave is not None:
            os.close(slave)
        os.close(master)
    assert done.returncode == 0, b"".join(terminal).decode(errors="replace")
    bar = b"".join(terminal).decode(errors="replace")
    # The bar counts frames up to the total (tqdm redraws it with \r).
    counts = [int(n) for n in re.findall(rf"(\d+)/{FRAMES}\b", bar)]
    assert counts and counts[-1] == FRAMES and counts == sorted(counts), bar
    assert "frame" in bar and "100%" in bar, bar
    # stdout is nothing but the JSON lines: one per answer and the summary.
    lines = stdout.decode().splitlines()
    parsed = [json.loads(line) for line in lines]
    assert len(parsed) == FRAMES + 1 and parsed[-1]["summary"]["answered"] == FRAMES
    assert "%" not in stdout.decode() and "\r" not in stdout.decode()
