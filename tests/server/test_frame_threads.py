"""The frame path's own native threads under eventlet (`webapp.server.frame_threads`):
every green thread gets its own answer or its own exception, and a call that
finds every frame thread busy runs on eventlet's `tpool` instead of waiting.

Run in a subprocess, monkey-patched as `webapp serve` is: importing eventlet
into the test process would change how the other tests' clients behave.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from serverproc import ROOT

pytestmark = pytest.mark.quick  # in `make test-fast`

SCRIPT = """
import json, threading, time, warnings
warnings.simplefilter("ignore")
import eventlet
eventlet.monkey_patch(thread=False)
from webapp.server.async_mode import Concurrency

concurrency = Concurrency.for_mode("eventlet", frame_threads=2)

def square(n):
    return n * n, threading.current_thread().name

def refuse(n):
    raise ValueError(f"no {n}")

class Stop(BaseException):
    pass

def stop():
    raise Stop("stopped")

# As many callers as frame threads, 500 calls each way: every answer comes
# back through the frame threads' wake-up, none through tpool.
pair = eventlet.GreenPool(2)
steady = list(pair.imap(lambda n: concurrency.run_short(square, n), range(1000)))
# 200 green threads at once: each gets its own result, on a native thread.
pool = eventlet.GreenPool(200)
answers = list(pool.imap(lambda n: concurrency.run_short(square, n), range(200)))
results = [value for value, _ in answers]
threads = sorted({name for _, name in answers})
errors = []
def failing(n):
    try:
        concurrency.run_short(refuse, n)
    except ValueError as exc:
        errors.append(str(exc))
list(pool.imap(failing, range(5)))
try:
    concurrency.run_short(stop)
    stopped = None
except Stop as exc:
    stopped = str(exc)

# Both frame threads held: the next call still runs, on tpool, while they wait.
release = threading.Event()
def hold():
    return release.wait(30), threading.current_thread().name
holders = [eventlet.spawn(concurrency.run_short, hold) for _ in range(2)]
eventlet.sleep(0.2)
started = time.monotonic()
value, overflow_thread = concurrency.run_short(square, 7)
waited = time.monotonic() - started
release.set()
held = [holder.wait() for holder in holders]
print(json.dumps({"steady": [[value, name] for value, name in steady], "results": results, "threads": threads,
                  "errors": sorted(errors), "stopped": stopped,
                  "overflow": [value, overflow_thread, waited < 5], "held": held}))
"""


def test_green_threads_get_their_own_answers_and_busy_threads_overflow_to_tpool():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert [value for value, _ in report["steady"]] == [n * n for n in range(1000)]
    assert {name for _, name in report["steady"]} == {"frame-thread-0", "frame-thread-1"}
    assert report["results"] == [n * n for n in range(200)]
    # Never the event loop's own thread: the frame threads, or tpool's while both were busy.
    assert "MainThread" not in report["threads"]
    assert any(name.startswith("frame-thread-") for name in report["threads"])
    assert report["errors"] == [f"no {n}" for n in range(5)]
    assert report["stopped"] == "stopped"  # a BaseException reaches its caller too
    value, thread, quick = report["overflow"]
    assert value == 49 and quick and not thread.startswith("frame-thread"), report["overflow"]
    assert sorted(report["held"]) == [[True, "frame-thread-0"], [True, "frame-thread-1"]]
