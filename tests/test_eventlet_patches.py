"""The faster websocket unmasking gives exactly eventlet's own results.

Compared in a subprocess: importing eventlet into the test process would
change how the other tests' clients behave.
"""

from __future__ import annotations

import subprocess
import sys

from serverproc import ROOT

COMPARE = """
import os, random, warnings
warnings.simplefilter("ignore")
from eventlet.websocket import RFC6455WebSocket
from webapp.eventlet_patches import apply_mask
original = RFC6455WebSocket.__dict__["_apply_mask"].__func__
cases = 0
for size in (0, 1, 3, 4, 5, 1000, 65537):
    for offset in (0, 1, 2, 3, 6):
        data = os.urandom(size)
        mask = tuple(random.Random(size + offset).getrandbits(8) for _ in range(4))
        assert apply_mask(data, mask, offset=offset) == original(data, mask, offset=offset)
        half = size // 2
        assert apply_mask(data, mask, length=half, offset=offset) == original(data, mask, length=half, offset=offset)
        cases += 1
print(cases)
"""


def test_same_as_eventlets_byte_loop():
    done = subprocess.run([sys.executable, "-c", COMPARE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "35"
