"""Copies of predictions for the `monitor` rooms, published by one background task.

With a message queue, every copy is a Redis publish. Publishing on the
frame's own path would let a slow or unreachable Redis delay the answer; one
task per copy would pile up tasks (OS threads in threading mode) while Redis
hangs. So copies go into a small bounded buffer that one long-lived task
drains: when Redis cannot keep up, the oldest copies are dropped (counted in
`dropped`) and answers are never delayed. Dashboards lose some copies during
an outage, which is the documented degraded mode.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable

log = logging.getLogger(__name__)

#: Copies buffered while the publisher is busy; beyond this the oldest go.
CAPACITY = 256


class MonitorFeed:
    def __init__(self, publish: Callable[[dict], None], concurrency, capacity: int = CAPACITY):
        self._publish = publish
        self._pending: deque = deque(maxlen=capacity)
        self._lock = threading.Lock()  # never held across a yield
        self._wake = concurrency.event()
        self.dropped = 0
        concurrency.spawn(self._run)

    def put(self, copy: dict) -> None:
        with self._lock:
            if len(self._pending) == self._pending.maxlen:
                self.dropped += 1
            self._pending.append(copy)
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            with self._lock:
                batch = list(self._pending)
                self._pending.clear()
                self._wake.clear()
            for copy in batch:
                try:
                    self._publish(copy)
                except Exception as exc:  # the queue's client logs its own retries
                    log.warning("a monitor copy was not published: %s: %.200s", type(exc).__name__, exc)
