"""Graceful shutdown on SIGTERM (what Heroku and container hosts send).

1. Stop accepting: new Socket.IO connections are refused and new frames are
   answered `overloaded` ("shutting down"), so clients move elsewhere.
2. Answer the frames already in flight (waiting for the data plane's
   in-flight count to reach zero, for at most `drain_seconds`).
3. Close every Socket.IO connection cleanly, then exit, well within the 30 s
   Heroku allows between SIGTERM and SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import time

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self, service, socketio, concurrency, drain_seconds: float = 20.0):
        self._service = service
        self._socketio = socketio
        self._concurrency = concurrency
        self.drain_seconds = drain_seconds
        self.draining = False

    def install_signal_handler(self, then=None) -> None:
        """Drain on SIGTERM; `then()` (e.g. the server's own shutdown) runs after."""

        def on_sigterm(signum, frame):
            if not self.draining:
                self.draining = self._service.draining = True
                self._concurrency.spawn(self.drain, then)

        signal.signal(signal.SIGTERM, on_sigterm)

    def drain(self, then=None) -> None:
        started = time.monotonic()
        log.info("SIGTERM: refusing new connections and frames, answering %d in flight",
                 self._service.in_flight)
        while self._service.in_flight and time.monotonic() - started < self.drain_seconds:
            self._concurrency.sleep(0.05)
        # The last answers are emitted just after they leave the data plane.
        self._concurrency.sleep(0.3)
        sids = [sid for sid, _ in self._socketio.server.manager.get_participants("/", None)]
        for sid in sids:
            try:
                self._socketio.server.disconnect(sid, ignore_queue=True)
            except Exception:
                log.debug("disconnect failed", exc_info=True)
        self._concurrency.sleep(0.2)  # let the close packets go out
        log.info("shutdown: %d frames left unanswered, %d connections closed, %.1fs",
                 self._service.in_flight, len(sids), time.monotonic() - started)
        logging.shutdown()
        if then is not None:
            then()
        else:
            os._exit(0)
