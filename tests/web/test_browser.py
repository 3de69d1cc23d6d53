"""The webcam page end to end in real headless Chromium (Debian's package).

Chromium's fake camera plays a Y4M clip, generated here, of one demo shape.
The tests look at what a person would: the label on the page, the fps and
round-trip figures, the messages. Screenshots go to `artifacts/`.
"""

from __future__ import annotations

import http.server
import shutil
import threading
import time
from functools import partial
from pathlib import Path

import pytest
from PIL import Image

from images import encode, shape_image
from serverproc import ROOT, ServerProcess, free_port

ARTIFACTS = ROOT / "artifacts"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def write_y4m(path: Path, images: list[Image.Image], fps: int = 10) -> Path:
    """A raw YUV 4:2:0 clip Chromium's fake camera can play."""
    width, height = images[0].size
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for image in images:
            y, cb, cr = image.convert("YCbCr").split()
            out.write(b"FRAME\n" + y.tobytes())
            out.write(cb.resize((width // 2, height // 2), Image.BILINEAR).tobytes())
            out.write(cr.resize((width // 2, height // 2), Image.BILINEAR).tobytes())
    return path


@pytest.fixture(scope="module")
def circle_clip(tmp_path_factory) -> Path:
    frames = [shape_image("circle", seed=7, size=(640, 480))] * 5
    return write_y4m(tmp_path_factory.mktemp("clip") / "circle.y4m", frames)


def chromium(extra_args=(), window=(420, 900), mobile=None):
    """Headless Chromium; `mobile` is chromedriver's mobileEmulation (e.g. a phone's deviceMetrics)."""
    assert CHROMIUM and CHROMEDRIVER, "make test installs chromium and chromium-driver"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--window-size={window[0]},{window[1]}", *extra_args):
        options.add_argument(arg)
    if mobile:
        options.add_experimental_option("mobileEmulation", mobile)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(driver, predicate, timeout=60):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The page re-renders the label list on every answer, so an element read
    # between two answers can go stale: read it again on the next poll.
    wait = WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,))
    return wait.until(lambda d: predicate(d))


def read_fresh(read, attempts=20):
    """`read()` again when the element it found was re-rendered meanwhile: the
    pages replace their label lists and status lines on every answer."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(attempts - 1):
        try:
            return read()
        except StaleElementReferenceException:
            time.sleep(0.05)
    return read()


def text(driver, element_id):
    return read_fresh(lambda: driver.find_element("id", element_id).text)


def top_label(driver):
    def first_label():
        labels = driver.find_elements("css selector", "#labels li .label")
        return labels[0].text if labels else None

    return read_fresh(first_label)


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("browser")
    proc = ServerProcess(env={"MODEL_CACHE_DIR": str(workdir / "cache")}, log_dir=workdir).start()
    proc.wait_ready()
    yield proc
    proc.stop()


def test_capture_page_labels_the_camera_offline(page_server, circle_clip):
    """The page shows the right label for the clip, with fps and latency, and
    works although every host but the server fails to resolve."""
    ARTIFACTS.mkdir(exist_ok=True)
    driver = chromium([
        "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={circle_clip}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ])
    try:
        driver.get(page_server.url + "/capture?model=shapes")
        wait_for(driver, lambda d: text(d, "model-status").startswith("ready"))
        driver.find_element("id", "start").click()
        wait_for(driver, lambda d: top_label(d) == "circle")
        wait_for(driver, lambda d: text(d, "stat-fps") not in ("", "–") and float(text(d, "stat-fps")) > 0)
        assert text(d := driver, "stat-rtt").endswith("ms")
        assert text(d, "connection") == "connected"
        driver.save_screenshot(str(ARTIFACTS / "capture.png"))
        requested = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href])")
        assert requested and all(url.startswith(page_server.url) for url in requested), requested
    finally:
        driver.quit()


def test_upload_fallback_labels_a_dropped_file(page_server, tmp_path):
    image = tmp_path / "square.png"
    image.write_bytes(encode(shape_image("square", seed=9, size=(300, 300)), "PNG"))
    driver = chromium()
    try:
        driver.get(page_server.url + "/capture?model=shapes")
        wait_for(driver, lambda d: text(d, "model-status").startswith("ready"))
        driver.find_element("id", "file").send_keys(str(image))
        wait_for(driver, lambda d: top_label(d) == "square")
        bad = tmp_path / "notes.png"
        bad.write_bytes(b"not really a png")
        driver.find_element("id", "file").send_keys(str(bad))
        wait_for(driver, lambda d: "not an image" in text(d, "message"))
    finally:
        driver.quit()


def test_denied_camera_shows_a_clear_message(page_server):
    driver = chromium(["--deny-permission-prompts", "--use-fake-device-for-media-stream"])
    try:
        driver.get(page_server.url + "/capture?model=shapes")
        wait_for(driver, lambda d: text(d, "model-status").startswith("ready"))
        driver.find_element("id", "start").click()
        wait_for(driver, lambda d: "denied" in text(d, "message"))
        driver.save_screenshot(str(ARTIFACTS / "capture-denied.png"))
    finally:
        driver.quit()


def test_front_end_on_another_origin(tmp_path):
    """examples/web served from its own origin connects cross-origin, and is
    refused when its origin is not allowed."""
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(ROOT / "examples" / "web"))
    static = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=static.serve_forever, daemon=True).start()
    allowed = ServerProcess(env={"CORS_ORIGINS": origin, "MODEL_CACHE_DIR": str(tmp_path / "a")},
                            log_dir=tmp_path).start()
    closed = ServerProcess(env={"MODEL_CACHE_DIR": str(tmp_path / "b")}, log_dir=tmp_path).start()
    image = tmp_path / "star.png"
    image.write_bytes(encode(shape_image("star", seed=4, size=(256, 256)), "PNG"))
    driver = chromium()
    try:
        allowed.wait_ready()
        driver.get(f"{origin}/index.html?server={allowed.url}&model=shapes")
        wait_for(driver, lambda d: text(d, "state") == "connected")
        driver.find_element("id", "file").send_keys(str(image))
        wait_for(driver, lambda d: text(d, "result").startswith("star"))
        driver.get(f"{origin}/index.html?server={closed.url}&model=shapes")
        wait_for(driver, lambda d: text(d, "state").startswith("refused"))
    finally:
        driver.quit()
        allowed.stop()
        closed.stop()
        static.shutdown()
