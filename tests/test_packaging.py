"""Deployment files agree with each other and with the pins."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from serverproc import ROOT


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            found.update(pins(path.parent / line[3:].strip()))
        elif "==" in line:
            name, version = line.split("==", 1)
            found[re.sub(r"[-_.]+", "-", name.lower())] = version.strip()
    return found


def test_environment_yml_uses_the_same_pins_as_pip():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    conda_pins = {}
    for entry in pip_section:
        if entry.startswith("-r "):
            conda_pins.update(pins(ROOT / entry[3:].strip()))
        elif "==" in entry:
            conda_pins.update(pins_from_line(entry))
    assert conda_pins == pins(ROOT / "requirements" / "base.txt")
    assert len(conda_pins) > 40  # the whole lock, not just the direct dependencies


def pins_from_line(line: str) -> dict[str, str]:
    name, version = line.split("==", 1)
    return {re.sub(r"[-_.]+", "-", name.lower()): version.strip()}


def test_every_direct_dependency_is_pinned():
    locked = pins(ROOT / "requirements" / "base.txt")
    for line in (ROOT / "requirements" / "base.in").read_text().splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            assert re.sub(r"[-_.]+", "-", name.lower()) in locked, name


def test_procfile_and_heroku_files_run_the_same_command():
    procfile = (ROOT / "Procfile").read_text().strip()
    assert procfile == "web: python -m webapp serve --host 0.0.0.0 --port $PORT"
    heroku = yaml.safe_load((ROOT / "heroku.yml").read_text())
    assert heroku["run"]["web"] == procfile.removeprefix("web: ")
    assert heroku["build"]["docker"]["web"]["target"] == "slim"


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_pyproject_declares_the_same_direct_dependencies():
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared_names = {re.sub(r"[-_.]+", "-", re.split(r"[<>=!~ ]", d, 1)[0].lower()) for d in declared}
    direct = {re.sub(r"[-_.]+", "-", line.split("#", 1)[0].strip().lower())
              for line in (ROOT / "requirements" / "base.in").read_text().splitlines()
              if line.split("#", 1)[0].strip()}
    assert declared_names == direct
