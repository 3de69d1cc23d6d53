"""This process's recent activity, for the dashboard: answers per second,
latency percentiles, recent errors, models, memory; and the feed that sends
it to the `monitor` room once a second.

Bounded: per model, a count for each of the last WINDOW_SECONDS seconds and
at most LATENCY_SAMPLES latencies, only while it is loaded or was answered in
that window; 20 recent errors. Models are those the registry knows
(metric-style label sets never grow with what clients send).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time

log = logging.getLogger(__name__)

#: Seconds of answers that fps and latency are measured over.
WINDOW_SECONDS = 5.0
#: The newest latencies kept per model within that window (percentiles of these).
LATENCY_SAMPLES = 4096


class _Recent:
    """One model's answers in the last WINDOW_SECONDS: a count per second, and
    the newest latencies. Counts, not one timestamp per answer, so fps is right
    at any rate (4096 timestamps over 5 s read at most 819 fps)."""

    __slots__ = ("seconds", "latencies")

    def __init__(self):
        # [whole second, answers in it]; one more than the window's seconds, whoever prunes it.
        self.seconds: collections.deque = collections.deque(maxlen=math.ceil(WINDOW_SECONDS) + 1)
        self.latencies: collections.deque = collections.deque(maxlen=LATENCY_SAMPLES)  # (time, total ms)

    def add(self, now: float, total_ms: float | None) -> None:
        second = math.floor(now)
        if self.seconds and self.seconds[-1][0] == second:
            self.seconds[-1][1] += 1
        else:
            self.seconds.append([second, 1])
        if total_ms is not None:
            self.latencies.append((now, total_ms))

    def forget_before(self, start: float) -> bool:
        """Drop what is older than `start`; whether anything is left."""
        while self.seconds and self.seconds[0][0] + 1 <= start:
            self.seconds.popleft()
        while self.latencies and self.latencies[0][0] < start:
            self.latencies.popleft()
        return bool(self.seconds or self.latencies)

    def answers_since(self, start: float) -> float:
        """Answers after `start`; the second it falls in counted pro rata."""
        total = 0.0
        for second, count in self.seconds:
            total += count * min(1.0, max(0.0, second + 1 - start))
        return total


class StatusBoard:
    """Recent activity of this process: fps per model, recent errors."""

    def __init__(self, registry, cache, metrics, process_id: str, memory=None, clock=time.monotonic):
        self._registry, self._cache, self._metrics, self._memory = registry, cache, metrics, memory
        self.process_id = process_id
        self._clock = clock
        self._recent: dict[str, _Recent] = {}
        #: Handler threads answer while the feed reads (threading mode); never held across a yield.
        self._lock = threading.Lock()
        self.recent_errors: collections.deque = collections.deque(maxlen=20)

    def answered(self, model: str, timing: dict | None = None) -> None:
        total_ms = timing.get("total_ms") if timing else None
        with self._lock:
            recent = self._recent.get(model)
            if recent is None:
                recent = self._recent[model] = _Recent()
            recent.add(self._clock(), None if total_ms is None else float(total_ms))

    def failed(self, model: str, code: str, message: str) -> None:
        if code != "superseded":
            self.recent_errors.appendleft({"at": time.time(), "model": model, "code": code, "message": message})

    def fps(self, model: str) -> float:
        with self._lock:
            recent = self._recent.get(model)
            answers = recent.answers_since(self._clock() - WINDOW_SECONDS) if recent is not None else 0.0
        return round(answers / WINDOW_SECONDS, 2)

    def latency(self, model: str) -> dict | None:
        """Server-side time per answer (`timing.total_ms`) over the last
        WINDOW_SECONDS: {"p50", "p95", "count"}, or None when nothing was answered."""
        start = self._clock() - WINDOW_SECONDS
        with self._lock:
            recent = sorted(ms for t, ms in getattr(self._recent.get(model), "latencies", ()) if t >= start)
        if not recent:
            return None

        def percentile(p: float) -> float:  # nearest rank: a value that was really measured
            return round(recent[min(len(recent) - 1, max(0, math.ceil(p * len(recent)) - 1))], 3)

        return {"p50": percentile(0.50), "p95": percentile(0.95), "count": len(recent)}

    def snapshot(self) -> dict:
        loaded = self._registry.loaded_models()
        self._forget_idle(set(loaded))
        models = []
        for name in sorted(set(loaded) | set(self._recent)):
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

    def _forget_idle(self, loaded: set) -> None:
        """Drop answers older than the window, and the models left with none
        that are not loaded: a model answered once stays on the board only
        while it is loaded or busy."""
        start = self._clock() - WINDOW_SECONDS
        with self._lock:
            for name, recent in list(self._recent.items()):
                if not recent.forget_before(start) and name not in loaded:
                    del self._recent[name]


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
