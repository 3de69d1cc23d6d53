"""A server that tells the tests the moment each model call starts.

The server runs with `tests/hooks` on its PYTHONPATH: `hooks/sitecustomize.py`
makes every model call create `<model>-<n>-batch<size>` in a directory as it
starts. Tests wait for those files, with a deadline, instead of sleeping and
hoping "the long inference is now running".
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from serverproc import ROOT, ServerProcess

HOOKS = ROOT / "tests" / "hooks"


class SignallingServer(ServerProcess):
    """The real server, telling `calls` (a directory) whenever a model call starts."""

    def __init__(self, calls: Path, **kwargs):
        super().__init__(**kwargs)
        self.calls = calls
        self.env["WEBAPP_TEST_CALL_SIGNALS"] = str(calls)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HOOKS), self.env.get("PYTHONPATH")]))

    def hold(self, model: str) -> None:
        """Calls of `model` that start from now on wait until `release(model)`."""
        (self.calls / f"hold-{model}").touch()

    def release(self, model: str) -> None:
        (self.calls / f"hold-{model}").unlink(missing_ok=True)

    def started_calls(self, model: str) -> list[int]:
        """Batch sizes of the calls of `model` started so far, in order."""
        found = []
        for path in self.calls.iterdir():
            if path.name.startswith("hold-") or path.name.endswith(".tmp"):
                continue
            name, number, size = path.name.rsplit("-", 2)
            if name == model and size.startswith("batch"):
                found.append((int(number), int(size[len("batch"):])))
        return [size for _, size in sorted(found)]

    def wait_for_calls(self, model: str, count: int, timeout: float = 60.0) -> list[int]:
        deadline = time.monotonic() + timeout
        while len(calls := self.started_calls(model)) < count:
            assert time.monotonic() < deadline, f"{count} calls of {model} never started: {calls}\n{self.log()}"
            time.sleep(0.02)
        return calls
