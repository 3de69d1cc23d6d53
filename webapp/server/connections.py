"""Bounds on Engine.IO sessions: how many, how long without a Socket.IO
connection, and refusals closed at once.

Every Engine.IO session (websocket or long-polling, authenticated or not)
holds memory and, in threading mode, a worker thread for its websocket, so:

* `MAX_CONNECTIONS` sessions may be open at once. A session opened beyond it
  is kept only long enough to be told: its Socket.IO CONNECT is answered
  with `connect_error` (message `overloaded`, data `{"code": "overloaded",
  "message": ...}`) and the session is closed.
* A session has `HANDSHAKE_TIMEOUT` seconds to complete a Socket.IO CONNECT;
  then it is closed. This is what bounds sessions that were never going to
  connect (scanners, half-open clients, the over-capacity ones above).
* A refused CONNECT (bad token, full, shutting down) closes the session at
  once instead of leaving it open for a retry the protocol allows but our
  clients never make. A long-polling client is given a short grace to fetch
  its `connect_error` first.

python-socketio offers no hook for "a CONNECT was refused", so `install`
looks after each one through `socketio_internals.after_connect`, and wraps
the Engine.IO `connect`/`disconnect` handlers it registers (public: `eio.on`).
The Engine.IO internals used (the session table, closing without waiting)
are checked in `engineio_internals`.
Deadlines are checked by one background task per process, not a timer per
session.

Engine.IO's own `disconnect(sid)` (used when a long-polling POST is refused,
e.g. a body over the limit) waits for the session's queue to be fetched; a
client that never polls again made that request hang for good, holding a
worker thread in threading mode. `install` makes it close without waiting.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

#: Set in a session's WSGI environ when it was opened beyond MAX_CONNECTIONS;
#: the connect handler refuses it.
OVER_CAPACITY = "webapp.over_capacity"
#: How often deadlines are checked (seconds): a closed session lingers at most this long.
SWEEP_INTERVAL = 0.25
#: How long a refused long-polling session stays open for its client to
#: fetch the `connect_error` (websocket sessions get it before the close).
REFUSED_POLL_GRACE = 2.0


def effective_max_connections(settings: dict) -> int:
    """MAX_CONNECTIONS, and in threading mode no more than the worker threads
    can hold: every open websocket keeps one gthread busy, and a tenth of the
    threads (at least one) stays free for HTTP (health checks, the API,
    long-polling requests). Past that, gunicorn would queue new connections
    silently instead of refusing them clearly."""
    limit = int(settings["MAX_CONNECTIONS"])
    if settings["ASYNC_MODE"] == "threading":
        threads = int(settings["THREADS"])
        limit = min(limit, max(1, threads - max(1, threads // 10)))
    return limit


class ConnectionGate:
    """Counts Engine.IO sessions and closes the ones past a bound."""

    def __init__(self, max_connections: int, handshake_timeout: float):
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self._lock = threading.Lock()
        self._open: set[str] = set()  # Engine.IO sessions counted
        self._pending: dict[str, float] = {}  # session -> handshake deadline (monotonic)
        self._refused: dict[str, float] = {}  # long-polling session -> close deadline
        self._sweeper_started = False
        self._server = None

    @property
    def open_sessions(self) -> int:
        return len(self._open)

    def refusal(self) -> tuple[str, dict]:
        """ConnectionRefusedError arguments for a session over capacity."""
        from ..errors import Overloaded

        message = (f"The server is at its limit of {self.max_connections} connections "
                   "(MAX_CONNECTIONS); try again later.")
        return "overloaded", Overloaded(message).to_dict()

    # ---- wiring ----------------------------------------------------------

    def install(self, server) -> None:
        """Hook into a python-socketio Server (and its Engine.IO server)."""
        from . import socketio_internals

        self._server = server
        eio = server.eio
        on_eio_connect, on_eio_disconnect = eio.handlers["connect"], eio.handlers["disconnect"]

        def eio_connect(eio_sid, environ, *args):
            refused = on_eio_connect(eio_sid, environ, *args)
            if refused is not None and refused is not True:
                return refused
            with self._lock:
                self._open.add(eio_sid)
                self._pending[eio_sid] = time.monotonic() + self.handshake_timeout
                if len(self._open) > self.max_connections:
                    environ[OVER_CAPACITY] = True
                start = not self._sweeper_started
                self._sweeper_started = True
            if start:
                server.start_background_task(self._sweep)
            return refused

        def eio_disconnect(eio_sid, *args):
            with self._lock:
                self._open.discard(eio_sid)
                self._pending.pop(eio_sid, None)
                self._refused.pop(eio_sid, None)
            return on_eio_disconnect(eio_sid, *args)

        def after_socketio_connect(eio_sid):
            if self._has_namespace(eio_sid):
                with self._lock:
                    self._pending.pop(eio_sid, None)
            else:
                self._close_refused(eio_sid)

        def eio_disconnect_without_waiting(sid=None):
            if sid is None:
                return disconnect_all()
            session = eio.sockets.pop(sid, None)
            if session is not None and not session.closed:
                session.close(wait=False, reason=eio.reason.SERVER_DISCONNECT)
            return None

        disconnect_all = eio.disconnect
        eio.on("connect", eio_connect)
        eio.on("disconnect", eio_disconnect)
        eio.disconnect = eio_disconnect_without_waiting
        socketio_internals.after_connect(server, after_socketio_connect)

    # ---- closing ---------------------------------------------------------

    def _has_namespace(self, eio_sid: str) -> bool:
        manager = self._server.manager
        return any(manager.sid_from_eio_sid(eio_sid, namespace) is not None
                   for namespace in list(manager.get_namespaces()))

    def _close_refused(self, eio_sid: str) -> None:
        session = self._server.eio.sockets.get(eio_sid)
        if session is None:
            return
        if session.upgraded:
            # The connect_error is already queued ahead of the close packet.
            self._close(eio_sid, "refused")
        else:
            with self._lock:
                self._pending.pop(eio_sid, None)
                self._refused[eio_sid] = time.monotonic() + REFUSED_POLL_GRACE

    def _close(self, eio_sid: str, why: str) -> None:
        eio = self._server.eio
        session = eio.sockets.get(eio_sid)
        if session is None or session.closed or session.closing:
            return
        # A refusal was logged by the connect handler already; a deadline was not.
        log.log(logging.DEBUG if why == "refused" else logging.INFO, "closing Engine.IO session %s: %s", eio_sid, why)
        # wait=False: a long-polling session nobody polls would never drain its queue.
        session.close(wait=False, abort=False, reason=eio.reason.SERVER_DISCONNECT)

    def _sweep(self) -> None:
        while True:
            self._server.sleep(SWEEP_INTERVAL)
            try:
                self._sweep_once()
            except Exception:  # never let the deadline task die
                log.exception("connection deadline check failed")

    def _sweep_once(self) -> None:
        now = time.monotonic()
        sockets = self._server.eio.sockets
        with self._lock:
            late = [sid for sid, deadline in self._pending.items() if deadline <= now]
            for sid in late:
                del self._pending[sid]
            fetched = [sid for sid, deadline in self._refused.items()
                       if deadline <= now or sid not in sockets or sockets[sid].queue.qsize() == 0]
            for sid in fetched:
                del self._refused[sid]
        for sid in late:
            if not self._has_namespace(sid):
                self._close(sid, f"no Socket.IO connection within HANDSHAKE_TIMEOUT ({self.handshake_timeout:g} s)")
        for sid in fetched:
            self._close(sid, "refused")


def bound_connections(app, server, settings: dict) -> ConnectionGate:
    """Install every network bound on a freshly initialised Socket.IO server."""
    if settings["ASYNC_MODE"] == "threading":
        from .simple_websocket_internals import install as bound_simple_websocket

        bound_simple_websocket(server.eio)
    else:
        # Idempotent; `webapp serve` installed it already, before monkey-patching
        # finished. Here for apps built any other way.
        from .eventlet_internals import install as bound_eventlet_websocket

        bound_eventlet_websocket()
    from .engineio_internals import install as end_pings_at_close

    end_pings_at_close()
    gate = ConnectionGate(effective_max_connections(settings), float(settings["HANDSHAKE_TIMEOUT"]))
    gate.install(server)
    app.extensions["connections"] = gate
    log.info("connections: at most %d open, %g s to complete the Socket.IO handshake, messages up to %d bytes",
             gate.max_connections, gate.handshake_timeout, server.eio.max_http_buffer_size)
    return gate
