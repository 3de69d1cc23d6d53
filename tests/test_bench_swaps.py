"""`python -m webapp bench --swaps N` runs and reports threads and RSS before/after (no speed or size assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

from serverproc import ROOT


def test_swaps_bench_publishes_every_version_and_reports(tmp_path):
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "webapp", "bench", "--swaps", "3", "--modes", "eventlet",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.with_suffix(".swaps.eventlet.json").read_text())
    assert report["swaps"] == 3 and report["failed"] == 0 and report["answered"] > 0
    assert {"before", "after"} <= set(report["threads"]) and {"before", "after"} <= set(report["rss_mb"])
    assert "threads" in done.stdout and "RSS" in done.stdout
