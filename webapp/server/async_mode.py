"""The few concurrency primitives the server needs, for either async mode.

The same serving code runs under eventlet (green threads on one OS thread) and
under plain threads (gunicorn's gthread worker). It only ever needs to start a
background task, wait on an event, sleep, and run blocking native work
(decoding, inference, downloads) without stalling other clients. This module
gives those four things the right implementation for the mode:

* eventlet: background tasks are green threads; blocking work goes to
  ``eventlet.tpool``, real OS threads, so the hub keeps answering pings,
  health checks and other clients' frames while a model runs; short CPU work
  of the frame path (`run_short`) goes to a few native threads of its own
  (`frame_threads`);
* threading: background tasks are daemon threads; blocking work runs in the
  calling thread, which is already a real thread.

Critical sections in the serving code use plain ``threading.Lock`` and never
yield while holding it, which is correct in both modes.
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class Concurrency:
    """Mode-specific primitives; build with `for_mode`."""

    mode = "base"

    def spawn(self, fn: Callable, *args, **kwargs):
        raise NotImplementedError

    def run_blocking(self, fn: Callable, *args, **kwargs):
        raise NotImplementedError

    def run_short(self, fn: Callable, *args):
        """`run_blocking` for CPU work measured to take milliseconds (a fast model's batch)."""
        return self.run_blocking(fn, *args)

    def event(self):
        raise NotImplementedError

    def sleep(self, seconds: float) -> None:
        raise NotImplementedError

    @staticmethod
    def for_mode(mode: str, frame_threads: int = 2) -> "Concurrency":
        if mode == "eventlet":
            return EventletConcurrency(frame_threads)
        if mode == "threading":
            return ThreadingConcurrency()
        raise ValueError(f"unknown async mode {mode!r}")


class ThreadingConcurrency(Concurrency):
    mode = "threading"

    def spawn(self, fn, *args, **kwargs):
        thread = threading.Thread(target=fn, args=args, kwargs=kwargs, daemon=True)
        thread.start()
        return thread

    def run_blocking(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)

    def event(self):
        return threading.Event()

    def sleep(self, seconds):
        time.sleep(seconds)


class EventletConcurrency(Concurrency):
    mode = "eventlet"

    def __init__(self, frame_threads: int = 2):
        import eventlet
        import eventlet.green.threading
        import eventlet.tpool

        from .frame_threads import FrameThreads

        self._eventlet = eventlet
        self._tpool = eventlet.tpool
        self._event_class = eventlet.green.threading.Event
        self._frame_threads = FrameThreads(frame_threads)

    def spawn(self, fn, *args, **kwargs):
        return self._eventlet.spawn(fn, *args, **kwargs)

    def run_blocking(self, fn, *args, **kwargs):
        return self._tpool.execute(fn, *args, **kwargs)

    def run_short(self, fn, *args):
        return self._frame_threads.run(fn, *args)

    def event(self):
        return self._event_class()

    def sleep(self, seconds):
        self._eventlet.sleep(seconds)
