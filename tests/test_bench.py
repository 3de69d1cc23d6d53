"""`python -m webapp bench --quick` runs end to end (a smoke test: no speed assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

from serverproc import ROOT


def test_quick_bench_produces_a_complete_report(tmp_path):
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "webapp", "bench", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["limits"]["shapes"]["best"]["fps"] > 0
    modes = {row["mode"] for row in report["server"]}
    assert modes == {"eventlet", "threading"}
    assert all(row["fps"] > 0 and row["errors"] == 0 for row in report["server"])
    assert {row["frame"] for row in report["server"]} == {"224x224", "640x480"}
    assert {row["mode"] for row in report["naive"]} == {"eventlet", "threading"}
    for row in report["overload"]:
        # Every frame sent under overload got an answer: a label or `superseded`.
        assert row["never_answered"] == 0, row
        assert row["errors"] == 0, {key: row[key] for key in ("mode", "error_codes", "error_examples")}
        assert row["answered"] + row["superseded"] == row["sent"]
    assert "| mode | model |" in done.stdout  # the printed table


def test_soak_reports_memory_errors_and_unanswered_frames(tmp_path):
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "-m", "webapp", "bench", "--soak", "12", "--modes", "threading",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text())
    assert done.returncode == 0, (report.get("error_codes"), report.get("server_log_tail"), done.stderr[-2000:])
    assert report["server_alive"] and report["never_answered"] == 0 and report["errors"] == 0
    assert report["answered"] + report["superseded"] == report["sent"] > 0
    assert report["offered_fps"] < report["capacity_fps"]
    assert len(report["rss_mb"]["samples"]) >= 2 and report["rss_mb"]["max"] > 0
    assert "RSS over time" in done.stdout
