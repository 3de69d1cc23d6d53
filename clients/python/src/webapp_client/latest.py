"""A one-frame slot between a live source and `Client.stream`: the latest frame wins."""

from __future__ import annotations

import threading


class LatestFrame:
    """Hold only the newest frame a live source produced.

    A camera thread calls `put(frame)` as fast as it captures; `Client.stream`
    takes a frame only when it may send one. A frame not taken before the
    next `put` is replaced (counted in `dropped`), so nothing queues: the slot
    is the whole buffer. `close()` ends the stream once the slot is empty.
    """

    def __init__(self):
        self._ready = threading.Condition()
        self._frame = None
        self._closed = False
        self.dropped = 0

    def put(self, frame) -> None:
        if frame is None:
            raise ValueError("a frame cannot be None")
        with self._ready:
            if self._closed:
                raise ValueError("put() after close()")
            if self._frame is not None:
                self.dropped += 1
            self._frame = frame
            self._ready.notify()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def __iter__(self):
        return self

    def __next__(self):
        with self._ready:
            while self._frame is None and not self._closed:
                self._ready.wait()
            if self._frame is None:
                raise StopIteration
            frame, self._frame = self._frame, None
            return frame
