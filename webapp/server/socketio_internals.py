"""python-socketio internals: whether a CONNECT was refused, whether an ack was requested.

python-socketio gives handlers neither fact, and the server needs both:

* A refused CONNECT (bad token, full, shutting down) should close its
  Engine.IO session at once (see `connections`). `after_connect` wraps
  `Server._handle_connect(eio_sid, namespace, data)` to look afterwards.
* A `frame` is answered with an ack *instead of* a `label` event when the
  client asked for one (answering both would make every `sio.call` client
  handle each answer twice, and clients do listen to both). `watch_events`
  wraps `Server._handle_event_internal(server, sid, eio_sid, data,
  namespace, id)` to record `ack_requested()` around each handler, and to
  answer events whose attachments were refused without running a handler,
  sending that ack itself with `Server._send_packet`. It also numbers
  events (`arrival()`): in threading mode as they are read, before the
  hand-off to a kept thread (`handler_threads`) that may start them the
  other way round, so a client's frames keep their order; under eventlet
  when python-socketio's green thread for the event starts (nothing yields
  between that and the frame reaching the service, so the numbers follow
  the order frames reach it, as before).

`check()` verifies these signatures at start-up (`library_internals.check`).
"""

from __future__ import annotations

import contextvars
import inspect
import itertools
from typing import Callable

from .library_internals import require

#: Whether the event being handled asked for an ack. A ContextVar is per
#: thread and per green thread, so concurrent handlers don't mix.
_ack_requested: contextvars.ContextVar[bool] = contextvars.ContextVar("ack_requested", default=False)
#: The number `watch_events` gave the event being handled, in reading order.
_arrival: contextvars.ContextVar[int | None] = contextvars.ContextVar("arrival", default=None)

_EXPECTED = {
    "_handle_connect": ["self", "eio_sid", "namespace", "data"],
    "_handle_event_internal": ["self", "server", "sid", "eio_sid", "data", "namespace", "id"],
    "_send_packet": ["self", "eio_sid", "pkt"],
}


def check() -> None:
    from importlib.metadata import version

    import socketio

    missing = []
    for name, parameters in _EXPECTED.items():
        method = getattr(socketio.Server, name, None)
        if not callable(method) or list(inspect.signature(method).parameters) != parameters:
            missing.append(f"socketio.Server.{name}({', '.join(parameters[1:])})")
    for name in ("sid_from_eio_sid", "get_namespaces"):
        if not callable(getattr(socketio.Manager, name, None)):
            missing.append(f"socketio.Manager.{name}")
    # Read for room membership (`socketio_events._room_members`): {namespace: {room: {sid: eio_sid}}}.
    if not isinstance(getattr(socketio.Manager(), "rooms", None), dict):
        missing.append("socketio.Manager().rooms")
    require(f"python-socketio {version('python-socketio')}", missing, "socketio_internals")


def ack_requested() -> bool:
    """Whether the event being handled now asked for an ack."""
    return _ack_requested.get()


def arrival() -> int | None:
    """The event being handled's number: events read later have higher numbers."""
    return _arrival.get()


def after_connect(server, then: Callable[[str], None]) -> None:
    """Call `then(eio_sid)` after each Socket.IO CONNECT has been handled, accepted or refused."""
    handle_connect = server._handle_connect

    def handle_connect_then(srv, eio_sid, namespace, data):
        try:
            return handle_connect(eio_sid, namespace, data)
        finally:
            then(eio_sid)

    server._handle_connect = handle_connect_then.__get__(server)


def watch_events(server, refuse: Callable[[list], dict | None], emit: Callable[[str, str, dict], None],
                 run: Callable[..., None] | None = None) -> None:
    """Record `ack_requested()` and `arrival()` around every event handler.

    `refuse(data)` sees each event's data first; when it returns an answer,
    the handler is not run and the answer goes back as the ack, or, when no
    ack was requested, as `emit(sid, "error", answer)`. With `run`, for a
    server built with `async_handlers=False`, the handler goes to `run(fn,
    *args)` (`handler_threads`) and the caller (the connection's reader) goes on.
    """
    from socketio import packet

    dispatch = server._handle_event_internal
    numbers = itertools.count()  # next() is atomic: one bytecode, under the GIL

    def dispatch_recording_ack(srv, sid, eio_sid, data, namespace, ack_id):
        answer = refuse(data)
        if answer is not None:
            if ack_id is not None:
                srv._send_packet(eio_sid, srv.packet_class(packet.ACK, namespace=namespace, id=ack_id, data=[answer]))
            else:
                emit(sid, "error", answer)
            return None
        if run is not None:
            run(dispatch_with_context, next(numbers), srv, sid, eio_sid, data, namespace, ack_id)
            return None
        return dispatch_with_context(next(numbers), srv, sid, eio_sid, data, namespace, ack_id)

    def dispatch_with_context(number, srv, sid, eio_sid, data, namespace, ack_id):
        tokens = _ack_requested.set(ack_id is not None), _arrival.set(number)
        try:
            return dispatch(srv, sid, eio_sid, data, namespace, ack_id)
        finally:
            _ack_requested.reset(tokens[0])
            _arrival.reset(tokens[1])

    server._handle_event_internal = dispatch_recording_ack
