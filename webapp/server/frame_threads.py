"""A few native threads of the frame path's own, for green threads (eventlet).

Under eventlet, work that holds the CPU (decoding, a model call) runs on a
native thread so the event loop keeps serving. eventlet's `tpool` is one
process-wide pool of 20 threads (`EVENTLET_THREADPOOL_SIZE`) that also runs S3
calls, model loads and store listings, which may wait for seconds. Its idle
threads wait in turn on one queue, so each task wakes a thread that was
asleep, and that thread goes back to sleep after it: about 20 voluntary
context switches per frame for the demo model under 8 clients. A pool no
larger than the cores mostly finds its next task already waiting: about 10,
and 4-17 % less server CPU per frame (README, Speed). Shrinking `tpool`
itself would do the same but let a slow S3 call hold up frames, so the frame
path gets this pool and everything else keeps `tpool`.

Only short work comes here (the batcher sends calls it has measured as
short), and only while one of the threads is free: otherwise the work goes
to `tpool` as before, so a call that turns out long (or a test that holds a
model's call) never makes other models' frames wait for this pool.
eventlet has no second `tpool`, hence these few lines with the same design:
a queue in, and a socket pair that wakes the event loop when answers are
ready.
"""

from __future__ import annotations

import collections
import threading


class FrameThreads:
    """`run(fn, *args)` on one of `threads` native threads, or `tpool`'s when none is
    free; the caller's green thread waits."""

    def __init__(self, threads: int):
        self.threads = max(1, int(threads))
        self._idle = self.threads  # threads not running a task (changed under _idle_lock)
        self._idle_lock = threading.Lock()
        self._started = False
        self._start_lock = threading.Lock()
        self._done: collections.deque = collections.deque()
        #: A wake-up byte is on its way to the event loop (saves a send per answer under load).
        self._signalled = False

    def run(self, fn, *args):
        import eventlet.event
        import eventlet.tpool

        if threading.current_thread() is not threading.main_thread():
            return fn(*args)  # already off the event loop (its thread is the main one)
        with self._idle_lock:
            free = self._idle > 0
            if free:
                self._idle -= 1
        if not free:
            return eventlet.tpool.execute(fn, *args)
        if not self._started:
            self._start()
        answer = eventlet.event.Event()
        self._tasks.put((answer, fn, args))
        ok, value = answer.wait()
        if ok:
            return value
        raise value

    def _start(self) -> None:
        import eventlet
        from eventlet import greenio, patcher

        with self._start_lock:
            if self._started:
                return
            native_socket = patcher.original("socket")
            self._tasks = patcher.original("queue").SimpleQueue()
            reader, self._wake = native_socket.socketpair()
            self._wake.setblocking(True)
            self._reader = greenio.GreenSocket(reader)
            eventlet.spawn(self._deliver)
            for index in range(self.threads):
                threading.Thread(target=self._work, name=f"frame-thread-{index}", daemon=True).start()
            self._started = True

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
                self._wake.sendall(b"!")

    def _deliver(self) -> None:
        """On the event loop: hand each finished task's result to its green thread."""
        while True:
            self._reader.recv(4096)
            # Cleared before draining: an answer appended after the drain
            # finds the flag down and sends another byte.
            self._signalled = False
            while self._done:
                answer, result = self._done.popleft()
                answer.send(result)
