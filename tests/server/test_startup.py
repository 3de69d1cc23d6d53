"""What importing the package costs, and settings validation."""

from __future__ import annotations

import subprocess
import sys

import pytest

from serverproc import ROOT

pytestmark = pytest.mark.quick  # in `make test-fast`


def test_importing_the_package_and_cli_loads_nothing_heavy():
    """eventlet must patch before ssl/socket are imported, and no model or
    TensorFlow may load at import time."""
    code = ("import sys, webapp, webapp.cli; "
            "print(','.join(m for m in ('ssl', 'socket', 'flask', 'socketio', 'tensorflow', 'keras', 'boto3') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


@pytest.mark.parametrize("override,message", [
    ({"ASYNC_MODE": "gevent"}, "ASYNC_MODE"),
    ({"RUNTIME": "onnx"}, "RUNTIME"),
    ({"MAX_FRAME_BYTES": 0}, "MAX_FRAME_BYTES"),
])
def test_bad_settings_fail_at_start_up(override, message):
    from webapp.config import load_config

    with pytest.raises(ValueError, match=message):
        load_config(override)
