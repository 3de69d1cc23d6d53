"""Network bounds a hostile client meets, in both async modes and both transports.

* a websocket message that never ends (FIN=0, then continuation frames) is
  cut off as soon as it passes the Socket.IO limit, and the server's memory
  grows by about that limit at most;
* long-polling bodies are bounded too, chunked or not;
* an Engine.IO session that never completes a Socket.IO CONNECT is closed
  after HANDSHAKE_TIMEOUT;
* MAX_CONNECTIONS refuses the next connection with a clear `connect_error`
  and admits again once a client leaves;
* a refused connection (bad token, full) is closed by the server at once and
  keeps nothing (threads, file descriptors) afterwards.

After each, a real client's good frame is still answered with a label.
Each test runs the real server as a subprocess and talks to it over real sockets.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading
import time

import pytest
import requests
import socketio

from images import encode, shape_image
from serverproc import Client, ServerProcess, rss_bytes
from webapp.bench.hostile import ws_frame  # masked client frames, as the hostile bench sends them

TOKENS = {"token-a": ["shapes"]}
AUTH = {"token": "token-a"}
MAX_FRAME_BYTES = 1024 * 1024
#: webapp.app.socketio_buffer_limit(MAX_FRAME_BYTES): the Socket.IO message limit.
MESSAGE_LIMIT = 2 * MAX_FRAME_BYTES + 64 * 1024
HANDSHAKE_TIMEOUT = 1.5
MAX_CONNECTIONS = 3
#: gthread worker threads (threading mode): few, so a held thread shows.
THREADS = 8
#: What a hostile client tries to make the server hold.
HOSTILE_BYTES = 200 * 1024 * 1024
#: Memory the server may grow by beyond the limit: allocator slack, socket
#: buffers, one read's worth of frames in flight, Python's own churn.
RSS_SLACK = 24 * 1024 * 1024
CIRCLE = encode(shape_image("circle", seed=5))
MODES = ("eventlet", "threading")


def _start(mode: str, model_store, workdir, **env) -> ServerProcess:
    proc = ServerProcess(async_mode=mode,
                         env={"MODEL_STORE": str(model_store), "PROJECT_TOKENS": json.dumps(TOKENS),
                              "MODEL_CACHE_DIR": str(workdir / "cache"), "MODELS_PRELOAD": "shapes",
                              "MAX_FRAME_BYTES": str(MAX_FRAME_BYTES), "HANDSHAKE_TIMEOUT": str(HANDSHAKE_TIMEOUT),
                              "THREADS": str(THREADS), **env},
                         log_dir=workdir).start()
    proc.wait_ready()
    return proc


@pytest.fixture(scope="module", params=MODES)
def bounded(request, model_store, tmp_path_factory):
    """A server with tokens, a 1 MB frame limit, a short handshake deadline and 8 threads."""
    proc = _start(request.param, model_store, tmp_path_factory.mktemp(f"bounds-{request.param}"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module", params=MODES)
def crowded(request, model_store, tmp_path_factory):
    """The same with room for 3 connections (its own server: sessions other
    tests leave behind for up to HANDSHAKE_TIMEOUT would count against it)."""
    proc = _start(request.param, model_store, tmp_path_factory.mktemp(f"crowded-{request.param}"),
                  MAX_CONNECTIONS=str(MAX_CONNECTIONS))
    yield proc
    proc.stop()


# ---- helpers -------------------------------------------------------------------


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class RssPeak:
    """Samples a process's RSS in the background; `growth` is the peak over the start."""

    def __init__(self, pid: int):
        self.pid, self.start = pid, rss_bytes(pid)
        self.peak, self._stop = self.start, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))
        return self.peak - self.start


def settle(pid: int, baseline: int, measure, timeout: float = 10.0) -> int:
    """Wait until `measure(pid)` is back at `baseline` (or timeout); return its last value."""
    deadline = time.monotonic() + timeout
    value = measure(pid)
    while value > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
        value = measure(pid)
    return value


def good_frame_answered(server: ServerProcess, transports=("websocket",)) -> None:
    with Client(server.url, auth=AUTH, transports=transports) as client:
        answer = client.call("frame", {"model": "shapes", "image": CIRCLE})
    assert answer["labels"][0]["label"] == "circle", answer


class RawWebSocket:
    """A websocket spoken by hand: the upgrade, then whatever frames a test wants."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=20)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = self.sock.recv(4096)
            assert chunk, reply
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 101"), reply
        self.buffer = reply.split(b"\r\n\r\n", 1)[1]

    def recv_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the server's next frame, or None once it closed the socket."""
        def need(count):
            while len(self.buffer) < count:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return False
                self.buffer += chunk
            return True

        try:
            if not need(2):
                return None
            length = self.buffer[1] & 0x7F
            start = 2
            if length == 126:
                if not need(4):
                    return None
                length, start = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif length == 127:
                if not need(10):
                    return None
                length, start = struct.unpack("!Q", self.buffer[2:10])[0], 10
            if not need(start + length):
                return None
        except (ConnectionResetError, BrokenPipeError):
            return None
        opcode, payload = self.buffer[0] & 0x0F, self.buffer[start:start + length]
        self.buffer = self.buffer[start + length:]
        return opcode, payload

    def closed_by_server(self, timeout: float) -> tuple[bool, int | None]:
        """Read until the server closes (True, close code) or `timeout` passes (False, None)."""
        self.sock.settimeout(timeout)
        code = None
        try:
            while True:
                got = self.recv_frame()
                if got is None:
                    return True, code
                if got[0] == 8:
                    code = struct.unpack("!H", got[1][:2])[0] if len(got[1]) >= 2 else 1005
        except socket.timeout:
            return False, code

    def close(self):
        self.sock.close()


def endless_message(raw: RawWebSocket, opcode: int, first: bytes) -> int:
    """A first frame with FIN=0, then 1 MB continuation frames until the server
    stops reading; returns the bytes sent."""
    sent = 0
    block = ws_frame(b"7" * (1024 * 1024), opcode=0, fin=False)
    try:
        raw.sock.sendall(ws_frame(first, opcode=opcode, fin=False))
        while sent < HOSTILE_BYTES:
            raw.sock.sendall(block)
            sent += len(block)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    return sent


# ---- messages that never end -----------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "binary"])
def test_an_endless_websocket_message_is_cut_off_at_the_limit(bounded, kind):
    pid = bounded.serving_pid
    raw = RawWebSocket(bounded.url)
    try:
        assert raw.recv_frame()[1].startswith(b"0")  # Engine.IO open
        raw.sock.settimeout(10)
        rss = RssPeak(pid)
        if kind == "text":  # an Engine.IO message, before any Socket.IO CONNECT or token
            sent = endless_message(raw, 1, b"42[\"frame\",\"")
        else:
            sent = endless_message(raw, 2, b"\x04")
        closed, code = raw.closed_by_server(10)
        growth = rss.stop()
    finally:
        raw.close()
    print(f"{bounded.async_mode} {kind}: sent {sent / 2**20:.1f} MB before the server stopped reading; "
          f"RSS peak growth {growth / 2**20:.1f} MB (limit {MESSAGE_LIMIT / 2**20:.1f} MB); close code {code}")
    assert closed
    assert code in (1009, None)  # the close frame may be lost to a reset while we were still sending
    assert sent < HOSTILE_BYTES
    assert growth < MESSAGE_LIMIT + RSS_SLACK
    good_frame_answered(bounded)


def test_over_long_messages_one_after_another_leave_nothing_behind(bounded):
    """Each connection cut off for an over-long message must let go of its
    threads and its buffer: after a few (which grow the worker's thread pool
    to what it needs), 15 more leave the thread count and RSS where they
    were (in threading mode each used to keep two threads and ~2 MB for good)."""
    pid = bounded.serving_pid

    def cut_off(times: int) -> None:
        for _ in range(times):
            raw = RawWebSocket(bounded.url)
            try:
                raw.recv_frame()
                raw.sock.settimeout(10)
                endless_message(raw, 1, b"42[\"frame\",\"")
                assert raw.closed_by_server(10)[0]
            finally:
                raw.close()

    cut_off(5)
    before_threads = settle(pid, 0, threads, timeout=2)
    before_rss = rss_bytes(pid)
    cut_off(15)
    assert settle(pid, before_threads, threads) <= before_threads
    # A leak was a whole message buffer per connection (15 x 2 MB); allocator slack is a few MB.
    assert rss_bytes(pid) - before_rss < 8 * MESSAGE_LIMIT
    good_frame_answered(bounded)


def test_a_legacy_websocket_is_refused(bounded):
    """Pre-RFC 6455 websockets (hixie-75: no Sec-WebSocket-Version) would be
    buffered until a 0xFF byte without any bound in eventlet; no browser
    speaks them, so they get no upgrade in either mode."""
    host, port = bounded.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     f"Upgrade: WebSocket\r\nConnection: Upgrade\r\nOrigin: http://{host}:{port}\r\n\r\n".encode())
        reply = conn.recv(4096)
        assert reply and not reply.startswith(b"HTTP/1.1 101"), reply
        try:
            conn.sendall(b"\x00" + b"a" * (4 * 1024 * 1024))
        except (BrokenPipeError, ConnectionResetError):
            pass
    good_frame_answered(bounded)


def test_a_long_polling_body_is_bounded(bounded):
    """Long-polling POSTs: Engine.IO refuses a Content-Length over the limit
    before reading, and reads nothing of a chunked body (it has no length)."""
    pid = bounded.serving_pid
    opened = requests.get(f"{bounded.url}/socket.io/?EIO=4&transport=polling", timeout=10)
    sid = json.loads(opened.text[1:])["sid"]
    path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    host, port = bounded.url.removeprefix("http://").split(":")

    with socket.create_connection((host, int(port)), timeout=20) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                     f"Content-Length: {HOSTILE_BYTES}\r\n\r\n".encode() + b"4" * 65536)
        reply = conn.recv(4096).decode("latin-1")
    assert reply.startswith("HTTP/1.1 4"), reply  # refused without reading the rest

    rss = RssPeak(pid)
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                     f"Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"%x\r\n" % (1024 * 1024) + b"4" * (1024 * 1024) + b"\r\n"
        try:
            while sent < HOSTILE_BYTES // 4:
                conn.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass
    growth = rss.stop()
    print(f"{bounded.async_mode} chunked long-polling POST: sent {sent / 2**20:.1f} MB; "
          f"RSS peak growth {growth / 2**20:.1f} MB")
    assert growth < MESSAGE_LIMIT + RSS_SLACK
    good_frame_answered(bounded, transports=("polling",))


# ---- handshake deadline ----------------------------------------------------------


def test_a_session_that_never_connects_is_closed_after_the_handshake_timeout(bounded):
    raw = RawWebSocket(bounded.url)
    try:
        assert raw.recv_frame()[1].startswith(b"0")
        started = time.monotonic()
        closed, _ = raw.closed_by_server(HANDSHAKE_TIMEOUT + 10)
        waited = time.monotonic() - started
    finally:
        raw.close()
    print(f"{bounded.async_mode}: silent websocket session closed after {waited:.2f} s")
    assert closed

    opened = requests.get(f"{bounded.url}/socket.io/?EIO=4&transport=polling", timeout=10)
    sid = json.loads(opened.text[1:])["sid"]
    time.sleep(HANDSHAKE_TIMEOUT + 1)
    poll = requests.get(f"{bounded.url}/socket.io/?EIO=4&transport=polling&sid={sid}", timeout=10)
    # Closed: either the close packet ("1") or, once it is gone, an unknown session.
    assert poll.status_code == 400 or poll.text.startswith("1"), poll.text
    good_frame_answered(bounded)


# ---- MAX_CONNECTIONS ---------------------------------------------------------


def _refused_connection(server: ServerProcess, transports, auth=AUTH):
    client = socketio.Client(reconnection=False)
    errors = []
    client.on("connect_error", lambda data=None: errors.append(data))
    with pytest.raises(socketio.exceptions.ConnectionError):
        client.connect(server.url, transports=list(transports), auth=auth, wait_timeout=10)
    return errors


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_max_connections_refuses_clearly_and_counts_departures(crowded, transport):
    clients = [Client(crowded.url, auth=AUTH, transports=(transport,)) for _ in range(MAX_CONNECTIONS)]
    try:
        errors = _refused_connection(crowded, (transport,))
        assert errors and errors[0]["message"] == "overloaded", errors
        assert errors[0]["data"]["code"] == "overloaded" and "MAX_CONNECTIONS" in errors[0]["data"]["message"]
        clients.pop().close()
        time.sleep(0.5)  # the disconnect is counted once the server sees it
        good_frame_answered(crowded, transports=(transport,))
    finally:
        for client in clients:
            client.close()


# ---- refused connections are closed at once ----------------------------------------


def test_refused_tokens_are_closed_at_once_and_keep_nothing(bounded):
    """More refused clients than the threading server has worker threads, each
    keeping its end of the socket open: each is closed by the server right
    after its connect_error, nothing stays held, and a good client is served."""
    pid = bounded.serving_pid
    good_frame_answered(bounded)  # every lazily started thread exists before the baseline
    time.sleep(1)
    base_threads, base_fds = threads(pid), open_fds(pid)
    refused, waits = [], []
    try:
        for _ in range(3 * THREADS):
            raw = RawWebSocket(bounded.url)
            refused.append(raw)
            assert raw.recv_frame()[1].startswith(b"0")  # Engine.IO open
            raw.sock.sendall(ws_frame(b'40{"token":"wrong"}', opcode=1, fin=True))
            started = time.monotonic()
            answer = raw.recv_frame()
            assert answer is not None and answer[1].startswith(b"44"), answer  # connect_error
            assert json.loads(answer[1][2:])["message"] == "unauthorized"
            closed, _ = raw.closed_by_server(HANDSHAKE_TIMEOUT / 2)  # before the handshake deadline could
            assert closed
            waits.append(time.monotonic() - started)
        after_fds = settle(pid, base_fds, open_fds)
        after_threads = settle(pid, base_threads, threads, timeout=3)
    finally:
        for raw in refused:
            raw.close()
    print(f"{bounded.async_mode}: {len(waits)} refused websockets closed at most {max(waits) * 1000:.0f} ms after "
          f"their connect_error; threads {base_threads} -> {after_threads}, fds {base_fds} -> {after_fds}")
    assert after_fds <= base_fds
    # gthread's pool may still grow to THREADS; nothing per refused client stays
    # (Engine.IO's ping task used to keep a thread per session for 25 s).
    assert after_threads <= base_threads + THREADS
    good_frame_answered(bounded)


def test_a_refused_long_polling_session_gets_its_error_then_is_closed(bounded):
    url = f"{bounded.url}/socket.io/?EIO=4&transport=polling"
    sid = json.loads(requests.get(url, timeout=10).text[1:])["sid"]
    posted = requests.post(f"{url}&sid={sid}", data='40{"token":"wrong"}', timeout=10)
    assert posted.status_code == 200
    fetched = requests.get(f"{url}&sid={sid}", timeout=10)
    assert fetched.text.startswith("44") and '"unauthorized"' in fetched.text, fetched.text
    deadline = time.monotonic() + 5
    while True:  # closed: the close packet ("1"), then an unknown session
        poll = requests.get(f"{url}&sid={sid}", timeout=10)
        if poll.status_code == 400:
            break
        assert poll.text.startswith("1") or time.monotonic() < deadline, poll.text
    good_frame_answered(bounded, transports=("polling",))


# ---- settings ------------------------------------------------------------------


@pytest.mark.parametrize("key,value", [("MAX_CONNECTIONS", 0), ("MAX_CONNECTIONS", -1),
                                       ("HANDSHAKE_TIMEOUT", 0), ("HANDSHAKE_TIMEOUT", -2.5)])
def test_connection_settings_must_be_positive(key, value):
    from webapp.config import load_config

    with pytest.raises(ValueError, match=key):
        load_config({key: value})


def test_threading_mode_keeps_connections_within_its_threads():
    from webapp.server.connections import effective_max_connections

    assert effective_max_connections({"MAX_CONNECTIONS": 1000, "ASYNC_MODE": "threading", "THREADS": 100}) == 90
    assert effective_max_connections({"MAX_CONNECTIONS": 3, "ASYNC_MODE": "threading", "THREADS": 8}) == 3
    assert effective_max_connections({"MAX_CONNECTIONS": 1000, "ASYNC_MODE": "eventlet", "THREADS": 100}) == 1000
