"""/capture reconnects by itself: the server restarts (as on every deploy) and
the page, untouched, goes on labelling the camera on the new process."""

from __future__ import annotations

import re
import time

import pytest
import requests

from images import shape_image
from serverproc import ServerProcess
from test_browser import chromium, text, top_label, wait_for, write_y4m


@pytest.fixture(scope="module")
def circle_clip(tmp_path_factory):
    frames = [shape_image("circle", seed=7, size=(640, 480))] * 5
    return write_y4m(tmp_path_factory.mktemp("clip") / "circle.y4m", frames)


def labels_answered(server) -> float:
    """Frames of `shapes` this process answered with a label (its /metrics)."""
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    found = re.search(r'^webapp_frames_total\{model="shapes",outcome="label"\} ([0-9.e+]+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def same_port_server(first: ServerProcess, log_dir) -> ServerProcess:
    """A new process on the port the page knows."""
    second = ServerProcess(env={k: v for k, v in first.env.items() if k not in ("PORT",)}, log_dir=log_dir)
    second.port, second.url = first.port, first.url
    second.env["PORT"] = str(first.port)
    second.log_path = log_dir / f"server-{first.port}-restarted.log"
    return second


@pytest.mark.parametrize("how", ["sigterm", "crash"])
def test_capture_page_reconnects_after_a_server_restart(circle_clip, tmp_path, how):
    first = ServerProcess(env={"MODEL_CACHE_DIR": str(tmp_path / "cache")}, log_dir=tmp_path)
    second = same_port_server(first, tmp_path)
    driver = None
    with first, second:
        first.start()
        first.wait_ready()
        driver = chromium(["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                           f"--use-file-for-fake-video-capture={circle_clip}"])
        try:
            driver.get(first.url + "/capture?model=shapes")
            wait_for(driver, lambda d: text(d, "model-status").startswith("ready"))
            driver.find_element("id", "start").click()
            wait_for(driver, lambda d: top_label(d) == "circle")
            assert text(driver, "connection") == "connected"

            if how == "sigterm":  # a deploy: the server drains and closes every socket
                first.stop()
            else:  # a crash: the connection just drops
                first.kill_group()
            wait_for(driver, lambda d: text(d, "connection") != "connected", timeout=30)

            second.start()
            second.wait_ready()
            # Nobody touches the page: it reconnects and keeps streaming to the new process.
            wait_for(driver, lambda d: text(d, "connection") == "connected", timeout=60)
            deadline = time.monotonic() + 60
            while labels_answered(second) < 5:
                assert time.monotonic() < deadline, (text(driver, "connection"), second.log()[-2000:])
                time.sleep(0.3)
            assert top_label(driver) == "circle"
        finally:
            driver.quit()
