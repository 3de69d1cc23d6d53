"""Bounds for websockets in threading mode (simple-websocket over wsproto).

Engine.IO's threading driver builds `simple_websocket.Server` without its
`max_message_size`, so a message was only measured (by Engine.IO) once it
was complete: a first frame with FIN=0 followed by endless continuation
frames grew one bytearray without bound. simple-websocket does count every
fragment of a message against `max_message_size` as wsproto hands them over
(at most `receive_bytes` at a time, or what one such read inflates to), and
closes with 1009 as soon as the count passes it; `BoundedWebSocketWSGI` passes
Engine.IO's own `max_http_buffer_size` as that bound.

Closing: simple-websocket's `close()` sends the close frame but leaves the
socket to its reader thread, which sits in `recv()` until the client answers.
A client that never does held that thread and the gunicorn worker thread
(waiting in `receive()`) for good, for every connection the server closed:
refused tokens, handshake deadlines, ping timeouts. `close()` here also
shuts the socket down, which wakes both at once.

Ending: when the reader thread stops (a message over the bound, a reset),
simple-websocket wakes a waiting `receive()` before it marks the connection
closed, so the receiver could check `connected`, find it still true, and wait
again, for good: the gunicorn thread and the message buffer (up to the whole
bound, ~8 MB) stayed alive for every such connection (measured: +800 MB after
120 over-long messages). `_ReceiverWakingServer` wakes it once more after the
reader has finished.

Only this server's Engine.IO driver table is changed (`install(eio)`), not the
library's, and `check` fails loudly at start-up if an upgrade moved
what this relies on (pyproject.toml bounds the versions too).
"""

from __future__ import annotations

import inspect
import socket

import simple_websocket
from engineio.async_drivers._websocket_wsgi import SimpleWebSocketWSGI

from .library_internals import source_of


class _ReceiverWakingServer(simple_websocket.Server):
    def _thread(self):
        try:
            super()._thread()
        finally:
            self.connected = False
            self.event.set()  # the receiver sees `connected` false now, whenever it looks


class BoundedWebSocketWSGI(SimpleWebSocketWSGI):
    """Engine.IO's simple-websocket wrapper with a message bound and a real close."""

    def __init__(self, handler, server, **kwargs):
        kwargs.setdefault("max_message_size", int(server.max_http_buffer_size))
        super().__init__(handler, server, **kwargs)

    def __call__(self, environ, start_response):
        # SimpleWebSocketWSGI.__call__, with the receiver-waking server.
        self.ws = _ReceiverWakingServer(environ, **self.server_args)
        ret = self.app(self)
        if self.ws.mode == "gunicorn":
            raise StopIteration()
        if self.ws.mode == "werkzeug":
            raise ConnectionError()
        return ret

    def close(self):
        super().close()
        sock = getattr(getattr(self, "ws", None), "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already gone: nothing left to wake
                pass


def check() -> None:
    """Fail loudly if simple-websocket/Engine.IO no longer have what this relies on."""
    import simple_websocket
    from simple_websocket import ws

    missing = []
    if "max_message_size" not in inspect.signature(simple_websocket.Server.__init__).parameters:
        missing.append("simple_websocket.Server(max_message_size=...)")
    if "incoming_message_len" not in source_of(ws.Base._handle_events):
        missing.append("simple_websocket.ws.Base._handle_events counting fragments (incoming_message_len)")
    call = source_of(SimpleWebSocketWSGI.__call__)
    if "simple_websocket.Server(environ, **self.server_args)" not in call or "StopIteration" not in call:
        missing.append("engineio SimpleWebSocketWSGI.__call__ building simple_websocket.Server(environ, **kwargs)")
    thread = source_of(ws.Base._thread)
    if "self.connected = self._handle_events()" not in thread:
        missing.append("simple_websocket.ws.Base._thread (reader loop setting `connected`)")
    from importlib.metadata import version

    from .library_internals import require

    require(f"simple-websocket {version('simple-websocket')} / python-engineio {version('python-engineio')}",
            missing, "simple_websocket_internals")


def install(eio) -> None:
    """Use the bounded wrapper for this Engine.IO server's websockets (threading mode)."""
    current = eio._async.get("websocket")
    if current is BoundedWebSocketWSGI:
        return
    if current is not SimpleWebSocketWSGI:
        from .library_internals import InternalsChanged

        raise InternalsChanged(f"Engine.IO's threading driver uses {current!r} for websockets, "
                           "not SimpleWebSocketWSGI: webapp.server.simple_websocket_internals needs updating")
    check()
    # A copy: the driver module's table is shared by every Engine.IO server.
    eio._async = {**eio._async, "websocket": BoundedWebSocketWSGI}
