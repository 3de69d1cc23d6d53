"""Test-only: lets a test see the moment a model call starts in a server it runs.

Python imports `sitecustomize` at start-up when this directory is on
PYTHONPATH, which only the servers of `tests/frames/test_concurrency.py` have. With
`WEBAPP_TEST_CALL_SIGNALS=DIR`, every model call a batcher makes first creates
`DIR/<model>-<n>-batch<size>` (n counts calls per process), then runs the
model as usual. Tests wait for that file, with a deadline, instead of sleeping
and hoping "the long inference is now running".

While a file `DIR/hold-<model>` exists, a call of that model waits (after
signalling) until the test removes it: frames sent meanwhile queue behind it,
so a test can make several frames share the next call for certain.

Nothing is imported here up front (the server monkey-patches at start-up):
`webapp.frames.batching` is instrumented when the server itself imports it.
"""

from __future__ import annotations

import importlib.abc
import itertools
import os
import sys
from time import sleep as _real_sleep  # taken before eventlet patches `time`

_TARGET = "webapp.frames.batching"
_DIR = os.environ.get("WEBAPP_TEST_CALL_SIGNALS")
_calls = itertools.count(1)


def _instrument(module) -> None:
    batcher = module.ModelBatcher
    original_init = batcher.__init__

    def __init__(self, name, predict, *args, **kwargs):
        def signalling_predict(inputs):
            path = os.path.join(_DIR, f"{name}-{next(_calls)}-batch{len(inputs)}")
            with open(path + ".tmp", "w"):
                pass
            os.replace(path + ".tmp", path)  # the file appears whole, at once
            hold = os.path.join(_DIR, f"hold-{name}")
            while os.path.exists(hold):  # a native thread: sleeping here blocks no event loop
                _real_sleep(0.01)
            return predict(inputs)

        original_init(self, name, signalling_predict, *args, **kwargs)

    batcher.__init__ = __init__


class _InstrumentingFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_instrument(module):
            exec_module(module)
            _instrument(module)

        spec.loader.exec_module = exec_and_instrument
        return spec


if _DIR:
    sys.meta_path.insert(0, _InstrumentingFinder())
