"""A few native threads of the frame path's own, for green threads (eventlet).

Under eventlet, work that holds the CPU (decoding, a model call) runs on a
native thread so the event loop keeps serving. eventlet's `tpool` is one
process-wide pool of 20 threads (`EVENTLET_THREADPOOL_SIZE`) that also runs S3
calls, model loads and store listings, which may wait for seconds. Its idle
threads wait in turn on one queue, so each task wakes a thread that was
asleep, and that thread goes back to sleep after it: about 20 voluntary
context switches per frame for the demo model under 8 clients, against 8
with these threads, and 9-19 % less server CPU per frame (README, Speed;
part of that is decoding in the call's hop again). Shrinking `tpool`
itself would do the same but let a slow S3 call hold up frames, so the frame
path gets this pool and everything else keeps `tpool`.

Only short work comes here (the batcher sends calls it has measured as
short), and only while one of the threads is free: otherwise the work goes
to `tpool` as before, so a call that turns out long (or a test that holds a
model's call) never makes other models' frames wait for this pool.
eventlet has no second `tpool`, hence these few lines with the same design:
a queue in, and a socket pair that wakes the event loop when answers are
ready.

Green threads all run on the main OS thread here, because the server
monkey-patches with `thread=False` (cli/serve.py); a call from any other
thread runs where it is.
"""

from __future__ import annotations

import collections
import logging
import threading

log = logging.getLogger(__name__)


class FrameThreads:
    """`run(fn, *args)` on one of `threads` native threads, or `tpool`'s when none is
    free; the caller's green thread waits."""

    def __init__(self, threads: int):
        self.threads = max(1, int(threads))
        self._idle = self.threads  # threads not running a task (changed under _idle_lock)
        self._idle_lock = threading.Lock()
        self._started = False
        self._done: collections.deque = collections.deque()
        #: A wake-up byte is on its way to the event loop (saves a send per answer under load).
        self._signalled = False

    def run(self, fn, *args):
        import eventlet.event
        import eventlet.tpool

        if threading.current_thread() is not threading.main_thread():
            return fn(*args)  # already off the event loop (its thread is the main one)
        if not self._started:
            self._start()
        with self._idle_lock:
            free = self._idle > 0
            if free:
                self._idle -= 1
        if not free:
            return eventlet.tpool.execute(fn, *args)
        answer = eventlet.event.Event()
        self._tasks.put((answer, fn, args))
        ok, value = answer.wait()
        if ok:
            return value
        raise value

    def _start(self) -> None:
        import eventlet
        from eventlet import greenio, patcher

        # Only ever on the event loop's thread, and nothing here yields: no lock needed.
        native_socket = patcher.original("socket")
        self._tasks = patcher.original("queue").SimpleQueue()
        reader, self._wake = native_socket.socketpair()
        self._wake.setblocking(True)
        self._reader = greenio.GreenSocket(reader)
        eventlet.spawn(self._deliver)
        self._started = True  # one queue and one socket pair, whatever happens below
        started = 0
        for index in range(self.threads):
            try:
                threading.Thread(target=self._work, name=f"frame-thread-{index}", daemon=True).start()
            except RuntimeError as exc:  # "can't start new thread": a process limit
                log.warning("started %d of %d frame threads (%s); the rest of the work goes to tpool",
                            started, self.threads, exc)
                break
            started += 1
        with self._idle_lock:
            self._idle -= self.threads - started
        self.threads = started

    def _work(self) -> None:
        while True:
            answer, fn, args = self._tasks.get()
            try:
                result = (True, fn(*args))
            except BaseException as exc:  # noqa: BLE001 - raised again in the waiting green thread
                result = (False, exc)
            with self._idle_lock:
                self._idle += 1
            self._done.append((answer, result))
            answer = fn = args = result = None
            if not self._signalled:
                self._signalled = True
                try:
                    self._wake.sendall(b"!")
                except OSError:  # cannot happen while the pair is open; say so loudly if it does
                    self._signalled = False
                    log.exception("a frame thread could not wake the event loop")

    def _deliver(self) -> None:
        """On the event loop: hand each finished task's result to its green thread."""
        while self._reader.recv(4096):  # empty: the pair was closed
            # Cleared before draining: an answer appended after the drain
            # finds the flag down and sends another byte.
            self._signalled = False
            while self._done:
                answer, result = self._done.popleft()
                try:
                    answer.send(result)
                except Exception:  # noqa: BLE001 - the other waiters must still get theirs
                    log.exception("handing a frame thread's result to its caller failed")
