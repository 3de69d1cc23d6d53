"""Engine.IO sessions leave nothing behind once closed.

Engine.IO sends its pings from a background task per session that sleeps for
the whole `ping_interval` (25 s) and only then looks whether the session was
closed meanwhile. In threading mode that task is an OS thread, so every
session, even one refused or closed a millisecond after it opened, kept a
thread for 25 s: a client opening sessions in a loop could pile up threads
far beyond `MAX_CONNECTIONS`. Here the wait ends as soon as the session
closes (an event set by `close`), so a closed session costs nothing.

`check` fails loudly at start-up if the replaced method changed
(pyproject.toml bounds python-engineio too).
"""

from __future__ import annotations

import functools
import inspect
import time

from .library_internals import require, source_of

#: Engine.IO's own `_send_ping`, kept when replaced so later checks read it.
_original_send_ping = None
#: Where each session keeps the event that ends its ping wait.
_CLOSED = "_webapp_closed_event"


def _closed_event(session):
    event = session.__dict__.get(_CLOSED)
    if event is None:  # created by whichever thread comes first; setdefault keeps one
        event = session.__dict__.setdefault(_CLOSED, session.server.create_event())
    return event


def _wakeable_send_ping(self):
    """Engine.IO's `Socket._send_ping`, with its sleep cut short by a close."""
    from engineio import packet

    if _closed_event(self).wait(self.server.ping_interval):
        return
    if not self.closing and not self.closed:
        self.last_ping = time.time()
        self.send(packet.Packet(packet.PING))


def _setting_closed_event(close):
    @functools.wraps(close)  # keeps close's signature visible to other start-up checks
    def close_and_wake(self, *args, **kwargs):
        try:
            return close(self, *args, **kwargs)
        finally:
            if self.closed:
                _closed_event(self).set()

    return close_and_wake


def check(socket_class=None) -> None:
    """Fail loudly at start-up if Engine.IO moved what the server relies on:
    the ping task replaced here, and what `connections` uses (the session
    table, `Socket.close(wait=...)`, the connect/disconnect handlers)."""
    from importlib.metadata import version

    import engineio
    from engineio.socket import Socket

    socket_class = socket_class or Socket
    missing = []
    send_ping = getattr(socket_class, "_send_ping", None)
    if getattr(socket_class, "_webapp_wakeable_ping", False):
        send_ping = _original_send_ping  # checked before it was replaced; look again at what it replaced
    source = source_of(send_ping) if send_ping else ""
    if "self.server.sleep(self.server.ping_interval)" not in source or "packet.PING" not in source \
            or "self.last_ping = time.time()" not in source:
        missing.append("engineio.socket.Socket._send_ping (sleep ping_interval, then send PING)")
    if not callable(getattr(socket_class, "close", None)) or not callable(getattr(socket_class, "schedule_ping", None)):
        missing.append("engineio.socket.Socket.close / schedule_ping")
    elif "wait" not in inspect.signature(socket_class.close).parameters:
        missing.append("engineio.socket.Socket.close(wait=...)")
    socket_init = source_of(socket_class.__init__)
    for name in ("upgraded", "queue", "closing", "closed"):
        if name not in socket_init:
            missing.append(f"engineio.socket.Socket.{name}")
    server_init = source_of(engineio.Server.__init__) + source_of(engineio.base_server.BaseServer.__init__)
    for name in ("self.sockets = {}", "self.handlers = {}"):
        if name not in server_init:
            missing.append(f"engineio.Server: {name}")
    require(f"python-engineio {version('python-engineio')}", missing, "engineio_internals")


def install() -> None:
    from engineio.socket import Socket

    if getattr(Socket, "_webapp_wakeable_ping", False):
        return
    check(Socket)
    global _original_send_ping
    _original_send_ping = Socket._send_ping
    Socket._send_ping = _wakeable_send_ping
    Socket.close = _setting_closed_event(Socket.close)
    Socket._webapp_wakeable_ping = True
