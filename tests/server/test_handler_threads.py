"""Socket.IO handlers in threading mode run on kept threads, never queued behind each other."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from webapp.server.handler_threads import HandlerThreads

pytestmark = pytest.mark.quick


def wait_until(condition, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_handler_never_waits_for_another_one():
    """Each busy handler holds a thread, as with a thread per event: the
    sixth of six held handlers starts at once."""
    pool = HandlerThreads(max_idle=2)
    release, started = threading.Event(), []
    for i in range(6):
        pool.run(lambda i=i: (started.append(i), release.wait(5)))
    wait_until(lambda: len(started) == 6)
    release.set()


def test_finished_threads_take_the_next_handlers_and_the_pool_shrinks_when_idle():
    pool = HandlerThreads(idle_seconds=3.0, max_idle=3, name="shrinking")

    def alive():
        return sum(thread.name.startswith("shrinking-") for thread in threading.enumerate())

    release, ran_on = threading.Event(), []

    def handler():
        ran_on.append(threading.current_thread().name)  # names are never reused; idents can be
        release.wait(5)

    for _ in range(5):
        pool.run(handler)
    wait_until(lambda: len(ran_on) == 5)
    release.set()
    wait_until(lambda: pool.idle == 3)  # at most max_idle wait; the others ended
    wait_until(lambda: alive() == 3)
    first = set(ran_on)
    for _ in range(3):  # one after another: each reuses a waiting thread
        done = threading.Event()
        pool.run(lambda: (ran_on.append(threading.current_thread().name), done.set()))
        assert done.wait(5)
        wait_until(lambda: pool.idle == 3)
    assert set(ran_on[5:]) <= first
    wait_until(lambda: pool.idle == 0, seconds=15)  # idle_seconds later every thread has ended
    wait_until(lambda: alive() == 0)


def test_a_failing_handler_is_logged_and_its_thread_serves_the_next(caplog):
    pool = HandlerThreads(max_idle=1)
    with caplog.at_level(logging.ERROR, logger="webapp.server.handler_threads"):
        pool.run(lambda: 1 / 0)
        wait_until(lambda: pool.idle == 1)
    assert "ZeroDivisionError" in caplog.text
    done = threading.Event()
    pool.run(done.set)
    assert done.wait(5)
