"""The command-line clients against the real server.

They are also run as in the environment `make run` creates (requirements/base.txt
only): in that run, every module installed only for the tests is unimportable.
A fresh virtualenv with the whole lock would mean installing TensorFlow again
for each run; the client package's own venv test (test_client_package.py)
covers a truly fresh install.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys

from images import encode, shape_image
from serverproc import ROOT


def cli(*args, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "webapp", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def locked_names(path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names |= locked_names(path.parent / line[3:].strip())
        elif "==" in line:
            names.add(normalise(line.split("==", 1)[0]))
    return names


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.lower())


def modules_only_tests_install() -> set[str]:
    """Top-level modules that come only from distributions outside requirements/base.txt."""
    base = locked_names(ROOT / "requirements" / "base.txt") | {"webapp", "webapp-client", "pip", "setuptools"}
    blocked = set()
    for module, dists in importlib.metadata.packages_distributions().items():
        if all(normalise(dist) not in base for dist in dists):
            blocked.add(module)
    return blocked


#: Runs `python -m webapp ARGS` with the modules in $BLOCKED_MODULES unimportable.
BASE_ONLY_BOOT = """
import os, runpy, sys
BLOCKED = set(os.environ["BLOCKED_MODULES"].split(","))
class TestOnly:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (installed only for the tests)", name=name)
sys.meta_path.insert(0, TestOnly())
sys.argv = ["webapp", *sys.argv[1:]]
runpy.run_module("webapp", run_name="__main__", alter_sys=True)
"""


def base_only_cli(*args, timeout=120):
    blocked = modules_only_tests_install()
    assert {"pytest", "selenium", "moto"} <= blocked  # the harness does hide the test requirements
    env = {**os.environ, "BLOCKED_MODULES": ",".join(sorted(blocked))}
    return subprocess.run([sys.executable, "-c", BASE_ONLY_BOOT, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_predict_and_stream_work_with_the_base_requirements_only(server, tmp_path):
    image = tmp_path / "circle.png"
    image.write_bytes(encode(shape_image("circle", seed=5, size=(160, 160)), "PNG"))
    done = base_only_cli("predict", "--server", server.url, "--model", "shapes", str(image))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["labels"][0]["label"] == "circle"
    assert "only polling" not in done.stderr  # the websocket transport is there too
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        (frames / f"{i}.jpg").write_bytes(encode(shape_image("star", seed=70 + i)))
    done = base_only_cli("stream", "--server", server.url, "--model", "shapes", str(frames))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["summary"]["answered"] == 3


def test_predict_prints_one_json_line_per_file(server, tmp_path):
    files = []
    for label in ("circle", "star"):
        path = tmp_path / f"{label}.png"
        path.write_bytes(encode(shape_image(label, seed=31, size=(200, 200)), "PNG"))
        files.append(path)
    done = cli("predict", "--server", server.url, "--model", "shapes", "--top-k", "2", *map(str, files))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(p) for p in files]
    assert [line["labels"][0]["label"] for line in lines] == ["circle", "star"]
    assert all(len(line["labels"]) == 2 and line["model"] == "shapes" for line in lines)


def test_predict_exit_code_reports_errors(server, tmp_path):
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    good.write_bytes(encode(shape_image("square", seed=2)))
    bad.write_bytes(b"definitely not a picture")
    done = cli("predict", "--server", server.url, "--model", "shapes", str(good), str(bad), str(tmp_path / "missing.jpg"))
    assert done.returncode == 1
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert "labels" in lines[0]
    assert lines[1]["code"] == "bad_image"
    assert lines[2]["code"] == "unreadable"
    unknown = cli("predict", "--server", server.url, "--model", "nope", str(good))
    assert unknown.returncode == 1 and json.loads(unknown.stdout)["code"] == "unknown_model"
    nowhere = cli("predict", "--server", "http://127.0.0.1:9", "--model", "shapes", str(good))
    assert nowhere.returncode == 2 and "cannot connect" in nowhere.stderr


def test_stream_a_directory_prints_labels_and_a_summary(server, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(8):
        (frames / f"{i:03}.jpg").write_bytes(encode(shape_image("triangle", seed=40 + i, size=(320, 240))))
    done = cli("stream", "--server", server.url, "--model", "shapes", "--fps", "20", str(frames))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    summary = lines[-1]["summary"]
    assert summary["frames"] == 8 and summary["answered"] == 8 and summary["errors"] == 0
    assert summary["fps"] > 0 and summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]
    labels = [line["labels"][0]["label"] for line in lines[:-1]]
    assert labels.count("triangle") >= 7
    assert all("interval_ms" in line["hint"] for line in lines[:-1])


def test_stream_a_video_file(server, tmp_path):
    import imageio.v3 as iio
    import numpy as np

    video = tmp_path / "clip.gif"
    clip = np.stack([np.asarray(shape_image("circle", seed=60 + i, size=(160, 120))) for i in range(5)])
    iio.imwrite(video, clip, duration=100, loop=0)
    done = cli("stream", "--server", server.url, "--model", "shapes", "--fps", "30", str(video))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])["summary"]
    assert summary["answered"] == 5


def test_stream_refuses_a_bad_rate_clearly(tmp_path):
    done = cli("stream", "--server", "http://127.0.0.1:9", "--fps", "0", str(tmp_path))
    assert done.returncode == 2 and "--fps must be positive" in done.stderr and "Traceback" not in done.stderr
