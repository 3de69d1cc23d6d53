"""This process's recent activity, for the dashboard: answers per second,
latency percentiles, recent errors, models, memory; and the feed that sends
it to the `monitor` room once a second.

Bounded: at most 4096 recent answers per model and 20 recent errors; models
are those the registry knows (metric-style label sets never grow with what
clients send).
"""

from __future__ import annotations

import collections
import logging
import math
import time

log = logging.getLogger(__name__)


class StatusBoard:
    """Recent activity of this process: fps per model, recent errors."""

    def __init__(self, registry, cache, metrics, process_id: str, memory=None):
        self._registry, self._cache, self._metrics, self._memory = registry, cache, metrics, memory
        self.process_id = process_id
        self._answers: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=4096))
        #: (monotonic time, total ms) of recent answers per model, for the latency percentiles.
        self._latencies: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=4096))
        self.recent_errors: collections.deque = collections.deque(maxlen=20)

    def answered(self, model: str, timing: dict | None = None) -> None:
        now = time.monotonic()
        self._answers[model].append(now)
        if timing and timing.get("total_ms") is not None:
            self._latencies[model].append((now, float(timing["total_ms"])))

    def failed(self, model: str, code: str, message: str) -> None:
        if code != "superseded":
            self.recent_errors.appendleft({"at": time.time(), "model": model, "code": code, "message": message})

    def fps(self, model: str, window: float = 5.0) -> float:
        now = time.monotonic()
        recent = [t for t in self._answers.get(model, ()) if now - t <= window]
        return round(len(recent) / window, 2)

    def latency(self, model: str, window: float = 5.0) -> dict | None:
        """Server-side time per answer (`timing.total_ms`) over the last `window`
        seconds: {"p50", "p95", "count"}, or None when nothing was answered."""
        now = time.monotonic()
        recent = sorted(ms for t, ms in self._latencies.get(model, ()) if now - t <= window)
        if not recent:
            return None

        def percentile(p: float) -> float:  # nearest rank: a value that was really measured
            return round(recent[min(len(recent) - 1, max(0, math.ceil(p * len(recent)) - 1))], 3)

        return {"p50": percentile(0.50), "p95": percentile(0.95), "count": len(recent)}

    def snapshot(self) -> dict:
        loaded = self._registry.loaded_models()
        models = []
        for name in sorted(set(loaded) | set(self._answers)):
            model = loaded.get(name)
            models.append({
                "name": name, **self._registry.state_of(name),
                "version": model.spec.version if model else None,
                "runtime": model.runtime.name if model else None,
                "memory_bytes": model.runtime.memory_bytes if model else 0,
                "queue_depth": model.batcher.depth if model else 0,
                "fps": self.fps(name),
                "latency_ms": self.latency(name),
            })
        return {
            "process": self.process_id, "time": time.time(), "models": models,
            "cache_bytes": self._cache.total_bytes() if self._cache else 0,
            "connected_clients": self._metrics.connected,
            "recent_errors": list(self.recent_errors),
            # limit, RSS and budgets; reading it also warns when RSS nears the limit
            "memory": self._memory.snapshot() if self._memory else None,
        }


def start_status_feed(socketio, board: StatusBoard, concurrency, interval: float = 1.0) -> None:
    """Send this process's status to the `monitor` room every `interval` seconds
    (through the message queue, so dashboards see every process)."""

    def feed():
        while True:
            concurrency.sleep(interval)
            try:
                socketio.emit("status", board.snapshot(), to="monitor")
            except Exception:  # e.g. the queue is down: the next tick retries
                log.debug("status feed failed", exc_info=True)

    concurrency.spawn(feed)
