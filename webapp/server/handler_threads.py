"""Threads for Socket.IO event handlers in threading mode, kept for the next event.

python-socketio runs each event's handler on a thread of its own, started for
that event and ended after it. For a frame that is a thread start and exit
every time: measured with the demo model under 8 clients, running handlers
without a new thread each cut the server's CPU per frame by 14 % (2.13
against 2.47 ms, four alternating rounds). So in threading mode the server
turns python-socketio's own handler threads off (`async_handlers=False`, which
leaves the handler on the connection's reader thread) and `watch_events`
hands each handler to `HandlerThreads.run` instead:

* an idle thread of the pool runs it if there is one, else a new thread does:
  a handler never waits for another one, exactly as with a thread per event
  (a frame parked behind a busy model must not hold up that client's next
  frame, which supersedes it, nor its pings);
* a thread waits `IDLE_SECONDS` for its next handler, then ends, and at most
  `MAX_IDLE` wait at once: after a burst the pool shrinks back on its own.

A handler handed to an idle thread does not wait for that thread to take it
(waiting, as `Thread.start()` does, cost the whole gain: 2.95 against 2.90 ms),
so two frames of one client may start in the wrong order. The reader numbers
each event before the hand-off (`socketio_internals.arrival()`), and the
service supersedes a frame that reaches its lane or its model's queue after a
newer one, or is answered after a newer one was
(`PredictionService.predict(arrival=..., answered=...)`), so the newest frame
still wins and no older label follows a newer one.

With `async_handlers=False`, python-socketio's server-side `call()` (an event
sent to a client, waiting for its ack) raises; the server never uses it.

`concurrent.futures.ThreadPoolExecutor` does not fit: past `max_workers` it
queues work (a handler would wait for another client's frame) and it never
lets an idle thread go.
"""

from __future__ import annotations

import logging
import queue
import threading

log = logging.getLogger(__name__)

#: How long a handler thread waits for another event before it ends.
IDLE_SECONDS = 10.0
#: The most handler threads kept waiting; a thread finding this many idle ends.
MAX_IDLE = 32


class HandlerThreads:
    """`run(fn, *args)`: on an idle pooled thread, or a new one; never queued."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS, max_idle: int = MAX_IDLE, name: str = "handler"):
        self.idle_seconds = idle_seconds
        self.max_idle = max_idle
        self._name = name
        self._idle: list[queue.SimpleQueue] = []  # each idle thread's inbox, newest last
        self._lock = threading.Lock()
        self._started = 0

    @property
    def idle(self) -> int:
        """Threads waiting for a handler now."""
        return len(self._idle)

    def run(self, fn, *args) -> None:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
            if inbox is None:
                self._started += 1
                index = self._started
        if inbox is not None:
            inbox.put((fn, args))
            return
        inbox = queue.SimpleQueue()
        inbox.put((fn, args))
        try:
            threading.Thread(target=self._work, args=(inbox,), name=f"{self._name}-{index}", daemon=True).start()
        except RuntimeError as exc:  # "can't start new thread": a process limit
            log.warning("no thread for a Socket.IO event handler (%s); running it on the reader's", exc)
            self._work(inbox, once=True)

    def _work(self, inbox: queue.SimpleQueue, once: bool = False) -> None:
        work = inbox.get()
        while True:
            fn, args = work
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - as an ended thread would: logged, and the pool goes on
                log.exception("a Socket.IO event handler failed")
            fn = args = work = None  # the handler's objects are not kept while idle
            if once:
                return
            with self._lock:
                if len(self._idle) >= self.max_idle:
                    return
                self._idle.append(inbox)
            try:
                work = inbox.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:  # nobody took this thread meanwhile: it ends
                        self._idle.remove(inbox)
                        return
                work = inbox.get()  # taken just as the wait ended: its handler is on the way
