"""`python -m webapp bench --quick` runs end to end (a smoke test: no speed assertions)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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
        # Every frame sent under overload got an answer: a label, `superseded`,
        # or `overloaded` (the documented answer past a server-wide bound).
        assert row["never_answered"] == 0, row
        assert set(row["error_codes"]) <= {"overloaded"}, {key: row[key] for key in ("mode", "error_codes",
                                                                                   "error_examples")}
        assert row["answered"] + row["superseded"] + row["errors"] == row["sent"]
    assert "| mode | model |" in done.stdout  # the printed table
    # The server's own cost per frame: measured for each mode, with the model's
    # cost and a reference task from the same run (values vary; only presence).
    assert {row["mode"] for row in report["cpu"]} == {"eventlet", "threading"}
    for row in report["cpu"]:
        assert row["frames"] > 0 and row["errors"] == 0
        assert row["server_cpu_ms_per_frame"] > 0 and row["reference_ms"] > 0
        assert row["overhead_ms"] == pytest.approx(row["server_cpu_ms_per_frame"] - row["model_cpu_ms_per_frame"],
                                                   abs=0.002)
        assert row["single_client_p50"] > 0
        # Beside it, what a lone client's latency is set against: the model's
        # batch-1 latency back to back and paced, and a frame refused unread.
        assert row["batch1_latency_ms"] > 0 and row["batch1_paced_ms"] > 0 and row["transport_floor_ms"] > 0
        # The transport's share: server CPU per frame refused before decoding.
        assert row["transport_cpu_ms_per_frame"] > 0
        assert row["beyond_transport_ms"] == pytest.approx(row["overhead_ms"] - row["transport_cpu_ms_per_frame"],
                                                           abs=0.002)
    assert report["model_cpu"]["shapes"]["cpu_ms_per_frame"] > 0
    assert "Server's own cost per 224x224 JPEG frame" in done.stdout


def test_soak_reports_memory_errors_and_unanswered_frames(tmp_path):
    out = tmp_path / "soak.json"
    done = subprocess.run([sys.executable, "-m", "webapp", "bench", "--soak", "12", "--modes", "threading",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text())
    assert done.returncode == 0, (report.get("error_codes"), report.get("server_log_tail"), done.stderr[-2000:])
    assert report["server_alive"] and report["never_answered"] == 0 and report["errors"] == 0
    assert report["answered"] + report["superseded"] == report["sent"] > 0
    # The load is the documented 80% of the capacity measured in this run (not just "less").
    assert report["capacity_fps"] > 0 and report["seconds"] == 12
    assert report["offered_fps"] == pytest.approx(0.8 * report["capacity_fps"], abs=0.1)
    assert len(report["rss_mb"]["samples"]) >= 2 and report["rss_mb"]["max"] > 0
    assert "RSS over time" in done.stdout


def test_compiled_model_comparison_runs_both_apis_on_the_same_model():
    """`python -m webapp.bench.compiled` (CompiledModel vs Interpreter): both answer, with the same outputs."""
    done = subprocess.run([sys.executable, "-m", "webapp.bench.compiled", str(ROOT / "models" / "shapes" / "model.tflite"),
                           "--batches", "1", "--rounds", "1", "--seconds", "0.2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    for api in ("interpreter", "compiled"):
        assert row[api]["ms_per_frame"] > 0 and row[api]["cpu_ms_per_frame"] > 0, row
    assert row["compiled"]["checksum"] == pytest.approx(row["interpreter"]["checksum"], abs=1e-3)
    assert row["compiled_vs_interpreter"] > 0
