"""A server-wide budget for the memory that decoding frames holds.

Encoded images are small (a 116 KB PNG can hold 36 million pixels of one
colour) but decoded ones are not, and a dozen arriving at once could take a
small container over its quota: every client of every project would be
dropped with it. So before a frame's pixels are decoded, its peak cost is
estimated from the header (`images.decode_cost`, exact for Pillow's decoders)
and reserved here. A frame that does not fit waits briefly for others to
finish, then is answered `overloaded`; one that could never fit is answered
`too_large` at once.

Waiting happens on the calling (green or OS) thread with the mode's own
event, never on a native worker thread, so a queue of large frames does not
hold the threads that decode and run the models.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from ..errors import Overloaded, TooLarge

#: How long a frame may wait for decode memory before `overloaded`.
DECODE_WAIT_SECONDS = 2.0


class DecodeBudget:
    def __init__(self, limit_bytes: int, concurrency, wait_seconds: float = DECODE_WAIT_SECONDS):
        self.limit_bytes = int(limit_bytes)
        self.wait_seconds = wait_seconds
        self.in_use = 0
        self._concurrency = concurrency
        self._lock = threading.Lock()  # never held across a wait
        self._waiters: list = []

    @contextmanager
    def reserve(self, cost: int):
        """Hold `cost` bytes of the budget for the duration of the block."""
        if cost > self.limit_bytes:
            raise TooLarge(f"Decoding this image would take {cost / 2**20:.0f} MB, over the server's decode "
                           f"budget of {self.limit_bytes / 2**20:.0f} MB (DECODE_MEMORY_MB); send a smaller "
                           f"image or a JPEG.")
        self._acquire(cost)
        try:
            yield
        finally:
            self._release(cost)

    def _acquire(self, cost: int) -> None:
        deadline = time.monotonic() + self.wait_seconds
        while True:
            with self._lock:
                if self.in_use + cost <= self.limit_bytes:
                    self.in_use += cost
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                waiter = self._concurrency.event()
                self._waiters.append(waiter)
            waiter.wait(remaining)
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        raise Overloaded("The server is decoding too many large images; try again shortly, "
                         "or send smaller images.")

    def _release(self, cost: int) -> None:
        with self._lock:
            self.in_use -= cost
            waiters, self._waiters = self._waiters, []
        for waiter in waiters:  # each checks again whether it fits now
            waiter.set()
