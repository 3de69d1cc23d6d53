"""eventlet_patches: the faster unmasking gives exactly eventlet's own results, messages are
bounded across fragments, and a moved internal fails loudly (simple-websocket's bound too).

Compared in a subprocess: importing eventlet into the test process would
change how the other tests' clients behave.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from serverproc import ROOT

pytestmark = pytest.mark.quick  # in `make test-fast`

COMPARE = """
import os, random, warnings
warnings.simplefilter("ignore")
from eventlet.websocket import RFC6455WebSocket
from webapp.server.eventlet_internals import apply_mask

original = RFC6455WebSocket.__dict__["_apply_mask"].__func__
cases = 0
for size in (0, 1, 3, 4, 5, 255, 256, 258, 1000, 65537):
    for offset in (0, 1, 2, 3, 6):
        data = os.urandom(size)
        mask = tuple(random.Random(size + offset).getrandbits(8) for _ in range(4))
        assert apply_mask(data, mask, offset=offset) == original(data, mask, offset=offset)
        half = size // 2
        assert apply_mask(data, mask, length=half, offset=offset) == original(data, mask, length=half, offset=offset)
        cases += 1
print(cases)
"""


def test_same_as_eventlets_byte_loop():
    done = subprocess.run([sys.executable, "-c", COMPARE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "50"


BOUND = """
import warnings
warnings.simplefilter("ignore")
from eventlet import websocket
from webapp.server.eventlet_internals import check as check_internals, install
install()
install()  # idempotent
message = websocket.RFC6455WebSocket.Message(2, 10)
message.push(b"x" * 6)
try:
    message.push(b"x" * 6, final=True)
except websocket.FailedConnectionError as exc:
    print(exc.status)

class Moved:
    FailedConnectionError = websocket.FailedConnectionError
try:
    check_internals(Moved)
except RuntimeError as exc:
    print("loud:", "RFC6455WebSocket" in str(exc))
"""


def test_messages_are_bounded_across_fragments_and_a_moved_internal_fails_loudly():
    done = subprocess.run([sys.executable, "-c", BOUND], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["1009", "loud: True"]


SIMPLE_WEBSOCKET = """
import engineio
from webapp.server import simple_websocket_internals as patches
eio = engineio.Server(async_mode="threading", max_http_buffer_size=1234)
shared = eio._async
patches.install(eio)
patches.install(eio)
print(eio._async["websocket"] is patches.BoundedWebSocketWSGI, shared["websocket"] is not patches.BoundedWebSocketWSGI)
ws = patches.BoundedWebSocketWSGI(None, eio)
print(ws.server_args)
other = engineio.Server(async_mode="threading")
other._async = {**other._async, "websocket": object}
try:
    patches.install(other)
except RuntimeError as exc:
    print("loud:", "SimpleWebSocketWSGI" in str(exc))
"""


def test_simple_websocket_gets_the_message_bound_on_this_server_only():
    done = subprocess.run([sys.executable, "-c", SIMPLE_WEBSOCKET], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["True True", "{'max_message_size': 1234}", "loud: True"]


READ_AHEAD = """
import os, socket, struct, threading, warnings
warnings.simplefilter("ignore")
from eventlet import websocket
from webapp.server.eventlet_internals import READ_AHEAD, install
install()

def frame(payload, opcode):
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

server_side, client_side = socket.socketpair()
sent = ["451-[\\"frame\\",{\\"model\\":\\"shapes\\"}]", os.urandom(READ_AHEAD + 1000), "2", os.urandom(3000), "3"]
wire = b"".join(frame(m.encode() if isinstance(m, str) else m, 1 if isinstance(m, str) else 2) for m in sent)
# Everything in one write, then in uneven pieces: both must come out message by message.
writer = threading.Thread(target=lambda: (client_side.sendall(wire),
                                          [client_side.sendall(wire[i:i + 777]) for i in range(0, len(wire), 777)]))
writer.start()
ws = websocket.RFC6455WebSocket(server_side, {}, max_frame_length=10 * READ_AHEAD)
received = [ws.wait() for _ in range(2 * len(sent))]
writer.join()
print(received == sent + sent, type(ws.socket).__name__)
"""


def test_reading_ahead_keeps_every_message_whole_however_the_bytes_arrive():
    done = subprocess.run([sys.executable, "-c", READ_AHEAD], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "True ReadAhead"
