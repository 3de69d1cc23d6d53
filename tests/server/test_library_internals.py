"""Library internals: touched in one guarded module per library, never at import.

* `import webapp` (and every module of the package) reads no environment
  variable and changes no library: settings are read and patches applied by
  `create_app`, for its async mode, once however often it is called.
* A library upgrade that moved an internal stops the server at start-up with
  a message naming it, in both modes, instead of silently losing a bound.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from serverproc import ROOT, free_port

pytestmark = pytest.mark.quick

IMPORT_EVERYTHING = r"""
import os, sys, pkgutil, importlib

read = []
class Watched(type(os.environ)):
    def __getitem__(self, key):
        read.append(key)
        return super().__getitem__(key)
    def __contains__(self, key):
        read.append(key)
        return super().__contains__(key)
watched = Watched(os.environ._data, os.environ.encodekey, os.environ.decodekey,
                  os.environ.encodevalue, os.environ.decodevalue)
os.environ = watched

import eventlet.websocket, socketio, engineio.socket, simple_websocket
from PIL import Image
def library_state():
    return {
        "apply_mask": eventlet.websocket.RFC6455WebSocket.__dict__["_apply_mask"],
        "Message": eventlet.websocket.RFC6455WebSocket.Message,
        "dispatch": socketio.Server._handle_event_internal,
        "connect": socketio.Server._handle_connect,
        "ping": engineio.socket.Socket._send_ping,
        "pixels": Image.MAX_IMAGE_PIXELS,
    }
before = library_state()
del read[:]  # what the libraries themselves read on import is theirs

import webapp
after_package = list(read)
skip = ("webapp.__main__", "webapp.demo.train", "webapp.bench.profile")
for info in pkgutil.walk_packages(webapp.__path__, "webapp."):
    if info.name not in skip and not info.name.startswith("webapp.models.runtime.convert"):
        importlib.import_module(info.name)
after = library_state()
from webapp.config import Settings
ours = set(Settings.model_fields)  # libraries read their own variables (HOME, LANG, ...) on import: not ours to judge
print("package read:", after_package)
print("modules read:", sorted(set(read) & ours))
print("changed:", sorted(k for k in before if before[k] is not after[k] and before[k] != after[k]))
"""


def test_importing_the_package_reads_no_setting_and_patches_nothing():
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert lines["package read"] == "[]"
    assert lines["modules read"] == "[]", "a module reads a setting at import"
    assert lines["changed"] == "[]", "a module patches a library at import"


CREATE_TWICE = r"""
import eventlet.websocket as ws
from webapp import create_app
create_app({"ASYNC_MODE": "eventlet", "START_BACKGROUND": False, "MODEL_STORE": "models"})
first = (ws.RFC6455WebSocket.Message, ws.RFC6455WebSocket.close, ws.RFC6455WebSocket.__dict__["_apply_mask"])
create_app({"ASYNC_MODE": "eventlet", "START_BACKGROUND": False, "MODEL_STORE": "models"})
second = (ws.RFC6455WebSocket.Message, ws.RFC6455WebSocket.close, ws.RFC6455WebSocket.__dict__["_apply_mask"])
print("bounded:", getattr(first[0], "_webapp_bounded", False))
print("same after a second app:", all(a is b for a, b in zip(first, second)))
"""


def test_create_app_applies_its_modes_patches_once():
    """An app embedded without `webapp serve` gets the eventlet fixes too, once."""
    done = subprocess.run([sys.executable, "-c", CREATE_TWICE], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bounded: True" in done.stdout
    assert "same after a second app: True" in done.stdout


STUBBED = r"""
import sys
{stub}
from webapp.cli import main
sys.exit(main(["serve", "--async-mode", "{mode}", "--host", "127.0.0.1", "--port", "{port}"]))
"""

STUBS = {
    "socketio dispatch": ("import socketio\ndel socketio.Server._handle_event_internal",
                          "socketio.Server._handle_event_internal"),
    "socketio connect": ("import socketio\nsocketio.Server._handle_connect = lambda self, sid: None",
                         "socketio.Server._handle_connect"),
    "engineio pings": ("import engineio.socket\nengineio.socket.Socket._send_ping = lambda self: None",
                       "engineio.socket.Socket._send_ping"),
}


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
@pytest.mark.parametrize("stub", sorted(STUBS))
def test_a_moved_internal_stops_the_server_at_start_up(mode, stub):
    code, named = STUBS[stub]
    port = free_port()
    done = subprocess.run([sys.executable, "-c", STUBBED.format(stub=code, mode=mode, port=port)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (done.stdout[-2000:], done.stderr[-2000:])
    assert named in done.stderr and "relies on" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_a_moved_eventlet_internal_stops_the_server_at_start_up():
    code = "import eventlet.websocket\ndel eventlet.websocket.WebSocketWSGI._handle_legacy_request"
    done = subprocess.run([sys.executable, "-c", STUBBED.format(stub=code, mode="eventlet", port=free_port())],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "WebSocketWSGI._handle_legacy_request" in done.stderr


def test_an_image_limit_over_pillows_own_is_refused_at_start_up():
    """MAX_IMAGE_PIXELS may not pass Pillow's bomb limit, which the server leaves alone."""
    done = subprocess.run([sys.executable, "-m", "webapp", "serve", "--port", str(free_port())], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MAX_IMAGE_PIXELS": "100000000"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "MAX_IMAGE_PIXELS" in done.stderr and "89478485" in done.stderr
