"""The Docker image really builds and runs, both targets (`slim`, `full`).

Built and run with Debian's podman: there is no Docker engine and no registry in
CI, so `deploy/podman/setup.sh` installs podman, points it at a storage of its own
under /tmp/webapp-podman and makes a local stand-in for `python:3.11-slim` (see
the script). Each image is then used the way a container host uses it: run with
`-e PORT`, probed on /healthz, sent a frame of the bundled demo model over
Socket.IO, and stopped with SIGTERM.

From nothing this takes several minutes (debootstrap, then pip installing both
targets' packages, TensorFlow included); re-runs reuse the images kept in that
storage and take well under a minute. Each target's installed size is written to
artifacts/container-sizes.json for the README.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass

import pytest
import requests

from images import encode, shape_image
from serverproc import ROOT, Client, free_port, wait_for_health

SETUP = ROOT / "deploy" / "podman" / "setup.sh"
PODMAN_DIR = "/tmp/webapp-podman"
PODMAN_ENV = {**os.environ, "WEBAPP_PODMAN_DIR": PODMAN_DIR,
              "CONTAINERS_CONF": f"{PODMAN_DIR}/containers.conf",
              "CONTAINERS_STORAGE_CONF": f"{PODMAN_DIR}/storage.conf"}
LABEL = "webapp-test=1"  # on every container started here, to find leftovers
SIZES = ROOT / "artifacts" / "container-sizes.json"
DEMO_SHAPES = ("circle", "square", "triangle", "star")

# The first build (debootstrap + both targets' pip installs) runs inside the
# first test's setup; every podman call below has its own, tighter, timeout.
pytestmark = pytest.mark.timeout(1800)


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], env=PODMAN_ENV, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def podman_ready() -> None:
    """podman installed and configured, the base image present (idempotent)."""
    setup = subprocess.run(["bash", str(SETUP)], env=PODMAN_ENV, capture_output=True, text=True,
                           timeout=900)
    assert setup.returncode == 0, f"{SETUP} failed:\n{setup.stdout[-3000:]}\n{setup.stderr[-3000:]}"
    # Containers left behind by an interrupted earlier run would hold their ports.
    leftovers = podman("ps", "-aq", "--filter", f"label={LABEL}").stdout.split()
    if leftovers:
        podman("rm", "-f", "-t", "0", *leftovers)


@pytest.fixture(scope="module", params=["slim", "full"])
def image(request, podman_ready) -> str:
    """The target built from this checkout. Both targets share the build stage,
    so the second build reuses its layers and only copies its venv."""
    target = request.param
    tag = f"localhost/webapp:{target}"
    # --format docker: OCI images drop the HEALTHCHECK that container hosts use.
    podman("build", "--pull=never", "--network", "host", "--format", "docker",
           "--target", target, "-t", tag, str(ROOT), timeout=1500)
    record_sizes(target, tag)
    return tag


def record_sizes(target: str, tag: str) -> None:
    """The installed size of the target's Python packages and of the whole image."""
    venv_kib = int(podman("run", "--rm", "--no-healthcheck", tag, "du", "-sk", "/venv").stdout.split()[0])
    image_bytes = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout)
    sizes = json.loads(SIZES.read_text()) if SIZES.exists() else {}
    # MB = 10^6 bytes, as `podman images` and `docker images` show them.
    sizes[target] = {"packages_mb": round(venv_kib * 1024 / 1e6), "image_mb": round(image_bytes / 1e6)}
    SIZES.parent.mkdir(exist_ok=True)
    SIZES.write_text(json.dumps(sizes, indent=2) + "\n")
    print(f"{tag}: packages (/venv) {sizes[target]['packages_mb']} MB, image {sizes[target]['image_mb']} MB")


@dataclass
class Container:
    id: str
    url: str

    def logs(self) -> str:
        result = podman("logs", self.id, check=False)
        return result.stdout + result.stderr


def start(image: str, timeout: float = 60) -> Container:
    """`podman run` as a container host would, then wait for /healthz."""
    port = free_port()
    # The health timer needs systemd, absent here; `podman healthcheck run` still works.
    cid = podman("run", "-d", "--network", "host", "--label", LABEL, "--health-interval", "disable",
                 "-e", f"PORT={port}", image).stdout.strip()
    container = Container(cid, f"http://127.0.0.1:{port}")

    def still_starting():
        state = podman("inspect", "--format", "{{.State.Status}}", cid).stdout.strip()
        if state != "running":
            raise AssertionError(f"container {state} before answering:\n{container.logs()}")

    if wait_for_health(container.url, timeout, still_starting):
        return container
    raise AssertionError(f"no /healthz answer in {timeout}s:\n{container.logs()}")


@pytest.fixture(scope="module")
def served(image):
    container = start(image)
    yield container
    podman("rm", "-f", "-t", "0", container.id)


def test_healthz_and_the_image_healthcheck_pass(served):
    response = requests.get(served.url + "/healthz", timeout=5)
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    # The image's own HEALTHCHECK command (what Docker and podman run) finds $PORT.
    check = podman("healthcheck", "run", served.id, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_demo_model_labels_frames(served):
    with Client(served.url) as client:
        for shape in DEMO_SHAPES:
            result = client.call("frame", {"model": "shapes", "image": encode(shape_image(shape))})
            assert result["labels"][0]["label"] == shape, result
            # Both targets serve the demo from its model.tflite (slim has nothing else).
            assert result["runtime"] == "litert-int8", result  # the demo ships its int8 file


def test_server_is_pid_1_and_not_root(served):
    """PID 1, so it gets the host's SIGTERM itself; uid 10001, so a breakout is not root."""
    status = podman("exec", served.id, "cat", "/proc/1/status").stdout
    uids = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
    assert uids == ["10001"] * 4, status
    cmdline = podman("exec", served.id, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert cmdline[:4] == ["python", "-m", "webapp", "serve"], cmdline


def test_only_full_has_tensorflow(image):
    result = podman("run", "--rm", "--no-healthcheck", image, "python", "-c", "import tensorflow",
                    check=False)
    if image.endswith(":slim"):
        assert result.returncode != 0 and "No module named 'tensorflow'" in result.stderr, result
    else:
        assert result.returncode == 0, result.stderr


def test_sigterm_drains_then_exits_0(image):
    container = start(image)
    try:
        with Client(container.url) as client:
            assert client.call("frame", {"model": "shapes", "image": encode(shape_image("star"))})["labels"]
            podman("kill", "--signal", "TERM", container.id)
            # Container hosts send SIGKILL 25-30 s after SIGTERM.
            exit_code = podman("wait", container.id, timeout=25).stdout.strip()
            assert exit_code == "0", container.logs()
            # The server closed the client's connection itself before exiting (the
            # client notices on its own thread, so give it a moment).
            deadline = time.monotonic() + 5
            while client.connected and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not client.connected
        logs = container.logs()
        assert "SIGTERM: refusing new connections and frames" in logs, logs
        assert "shutdown: 0 frames left unanswered, 1 connections closed" in logs, logs
    finally:
        podman("rm", "-f", "-t", "0", container.id)
