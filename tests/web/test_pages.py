"""The JS module and the pages, in real headless Chromium (Debian's package).

* `/predictor.js` imported by a page on another origin (a second port): a
  canvas, a Blob, an ImageBitmap and a streamed video get labels; a bad Blob
  and an unknown model reject with the error object.
* `/capture` with a fake camera at laptop size and on an emulated phone: the
  top label is inside the viewport, no scrolling needed; with two fake
  cameras the switch button moves to the other one.
* `/dashboard` under live traffic: its SVG charts are drawn and change.

Screenshots go to `artifacts/`.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from functools import partial

import pytest
import requests
import socketio

from images import encode, shape_image
from serverproc import ServerProcess, free_port
from test_browser import ARTIFACTS, chromium, read_fresh, text, top_label, wait_for, write_y4m

PHONE = {"deviceMetrics": {"width": 390, "height": 844, "pixelRatio": 3.0},
         "userAgent": "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
                      "Chrome/120.0 Mobile Safari/537.36"}


@pytest.fixture(scope="module")
def circle_clip(tmp_path_factory):
    frames = [shape_image("circle", seed=7, size=(640, 480))] * 5
    return write_y4m(tmp_path_factory.mktemp("clip") / "circle.y4m", frames)


@pytest.fixture(scope="module")
def static_site(tmp_path_factory):
    """A plain static HTTP server on another port: another origin."""
    root = tmp_path_factory.mktemp("site")
    port = free_port()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    site = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{port}"
    site.shutdown()


@pytest.fixture(scope="module")
def cross_origin_server(static_site, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pages")
    _, origin = static_site
    proc = ServerProcess(env={"MODEL_CACHE_DIR": str(workdir / "cache")}, log_dir=workdir)
    # The other origin, and the server's own for /capture and /dashboard
    # (listed explicitly: that is what works with any version of the CORS rules).
    proc.env["CORS_ORIGINS"] = f"{origin},{proc.url}"
    proc.start()
    proc.wait_ready()
    yield proc
    proc.stop()


MODULE_PAGE = """<!doctype html>
<meta charset="utf-8"><title>predictor.js from another origin</title>
<img id="picture" src="circle.png">
<script type="module">
  import { Predictor, PredictionError } from "SERVER/predictor.js";
  const out = (window.outcome = { statuses: [] });
  const predictor = new Predictor("SERVER", { model: "shapes" });
  predictor.on("status", (s) => out.statuses.push(s.state));
  predictor.on("connect", () => { out.connected = true; });
  try {
    const picture = document.getElementById("picture");
    await picture.decode();
    const canvas = document.createElement("canvas");
    canvas.width = picture.naturalWidth;
    canvas.height = picture.naturalHeight;
    canvas.getContext("2d").drawImage(picture, 0, 0);
    out.canvas = await predictor.predict(canvas);
    out.blob = await predictor.predict(await (await fetch("square.png")).blob());
    out.bitmap = await predictor.predict(await createImageBitmap(picture));
    try {
      await predictor.predict(new Blob(["not an image"], { type: "image/png" }));
      out.rejection = "resolved";
    } catch (err) {
      out.rejection = { isPredictionError: err instanceof PredictionError, code: err.code, message: err.message, id: err.id };
    }
    try {
      await predictor.predict(canvas, { model: "no-such-model" });
    } catch (err) {
      out.unknown = { code: err.code, message: err.message };
    }
    // A video element fed by the canvas: stream() paces, resizes and answers.
    const video = document.createElement("video");
    video.muted = true;
    video.srcObject = canvas.captureStream(10);
    const repaint = setInterval(() => canvas.getContext("2d").drawImage(picture, 0, 0), 100);
    await video.play();
    out.streamed = await new Promise((resolve) => {
      const labels = [];
      const stop = predictor.stream(video, (label, info) => {
        labels.push({ top: label.labels[0].label, roundTripMs: info.roundTripMs });
        if (labels.length === 3) { stop(); resolve(labels); }
      }, { fps: 10 });
    });
    clearInterval(repaint);
  } catch (err) {
    out.failure = String(err && (err.stack || err.message || err.code || err));
  }
  out.done = true;
</script>
"""


def test_predictor_module_from_another_origin(cross_origin_server, static_site):
    root, origin = static_site
    (root / "circle.png").write_bytes(encode(shape_image("circle", seed=3, size=(400, 300)), "PNG"))
    (root / "square.png").write_bytes(encode(shape_image("square", seed=5, size=(300, 300)), "PNG"))
    (root / "module.html").write_text(MODULE_PAGE.replace("SERVER", cross_origin_server.url))
    driver = chromium()
    try:
        driver.get(f"{origin}/module.html")
        wait_for(driver, lambda d: d.execute_script("return window.outcome && window.outcome.done"))
        outcome = driver.execute_script("return window.outcome")
        assert "failure" not in outcome, outcome
        assert outcome["connected"]
        assert outcome["canvas"]["model"] == "shapes" and outcome["canvas"]["labels"][0]["label"] == "circle"
        assert outcome["blob"]["labels"][0]["label"] == "square"
        assert outcome["bitmap"]["labels"][0]["label"] == "circle"
        assert outcome["canvas"]["hint"]["interval_ms"] >= 0
        assert outcome["rejection"]["isPredictionError"] and outcome["rejection"]["code"] == "bad_image"
        assert outcome["rejection"]["message"]
        assert outcome["unknown"]["code"] == "unknown_model"
        assert [item["top"] for item in outcome["streamed"]] == ["circle"] * 3
        assert all(item["roundTripMs"] > 0 for item in outcome["streamed"])
        assert "loaded" in outcome["statuses"]
        # The module came from the server, the page from its own origin.
        scripts = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name).filter(n => n.endsWith('.js'))")
        assert f"{cross_origin_server.url}/predictor.js" in scripts
    finally:
        driver.quit()


def test_module_is_served_with_cors_for_any_origin(cross_origin_server):
    for path in ("/predictor.js", "/predictor/socket.io.esm.js"):
        response = requests.get(cross_origin_server.url + path, headers={"Origin": "https://elsewhere.example"})
        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Content-Type"].startswith("text/javascript")


def in_viewport(driver, selector):
    return driver.execute_script("""
        const el = document.querySelector(arguments[0]);
        if (!el) return null;
        const r = el.getBoundingClientRect();
        return {top: r.top, bottom: r.bottom, left: r.left, right: r.right,
                width: innerWidth, height: innerHeight, scrollable: document.documentElement.scrollHeight > innerHeight,
                inside: r.height > 0 && r.top >= 0 && r.left >= 0 && r.bottom <= innerHeight && r.right <= innerWidth};
    """, selector)


@pytest.mark.parametrize("screen", ["laptop", "phone"])
def test_capture_labels_in_view_while_holding_the_camera(cross_origin_server, circle_clip, screen):
    ARTIFACTS.mkdir(exist_ok=True)
    camera = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
              f"--use-file-for-fake-video-capture={circle_clip}"]
    driver = chromium(camera, window=(1280, 720), mobile=PHONE if screen == "phone" else None)
    try:
        if screen == "laptop":  # exactly 1280x720 of page, whatever the window decorations
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": 1280, "height": 720, "deviceScaleFactor": 1, "mobile": False})
        driver.get(cross_origin_server.url + "/capture?model=shapes")
        wait_for(driver, lambda d: text(d, "model-status").startswith("ready"))
        driver.find_element("id", "start").click()
        wait_for(driver, lambda d: top_label(d) == "circle")
        wait_for(driver, lambda d: text(d, "stat-fps") not in ("", "–") and float(text(d, "stat-fps")) > 0)
        box = in_viewport(driver, "#labels li:first-child")
        expected = (1280, 720) if screen == "laptop" else (390, 844)
        assert (box["width"], box["height"]) == expected, box
        assert box["inside"], box
        assert not box["scrollable"], box
        for figure in ("stat-fps", "stat-rtt", "model-status", "connection"):
            assert in_viewport(driver, f"#{figure}")["inside"], figure
        assert text(driver, "stat-rtt").endswith("ms")
        # One fake camera: nothing to switch to.
        assert not driver.find_element("id", "switch").is_displayed()
        driver.save_screenshot(str(ARTIFACTS / f"capture-{screen}.png"))
    finally:
        driver.quit()


def svg_of(driver, chart_id):
    return driver.execute_script(f"return document.querySelector('#{chart_id} svg').innerHTML")


@pytest.fixture
def fresh_server(tmp_path):
    """A server no other test has sent errors to."""
    proc = ServerProcess(env={"MODEL_CACHE_DIR": str(tmp_path / "cache")}, log_dir=tmp_path).start()
    proc.wait_ready()
    yield proc
    proc.stop()


def test_dashboard_draws_live_charts(fresh_server):
    """Under live traffic the charts show the model and change over time;
    the error list says it is empty, then shows an error with its time and code."""
    ARTIFACTS.mkdir(exist_ok=True)
    server = fresh_server
    frame = encode(shape_image("triangle", seed=11))
    stop = threading.Event()
    sent = []

    def traffic():
        client = socketio.Client()
        client.connect(server.url, transports=["websocket"])
        try:
            while not stop.is_set():
                answer = client.call("frame", {"model": "shapes", "image": frame}, timeout=30)
                sent.append(answer.get("code") or answer["labels"][0]["label"])
                time.sleep(0.08)
        finally:
            client.disconnect()

    driver = chromium(window=(1280, 1000))
    worker = threading.Thread(target=traffic, daemon=True)
    try:
        driver.get(server.url + "/dashboard")
        wait_for(driver, lambda d: d.find_element("id", "connection").text == "● live")
        wait_for(driver, lambda d: text(d, "processes") == "1")
        assert text(driver, "errors") == "No errors reported."
        worker.start()
        fps_line = "#chart-fps path[data-series='shapes']"
        wait_for(driver, lambda d: d.find_elements("css selector", fps_line))
        wait_for(driver, lambda d: d.find_elements("css selector", "#chart-latency path[data-series='shapes']"))
        before = {chart: svg_of(driver, chart) for chart in ("chart-fps", "chart-latency", "chart-memory", "chart-queue")}
        # The lines grow as samples arrive, one a second.
        wait_for(driver, lambda d: svg_of(d, "chart-fps") != before["chart-fps"]
                 and svg_of(d, "chart-latency") != before["chart-latency"], timeout=20)
        assert "shapes" in read_fresh(lambda: driver.find_element("css selector", "#chart-fps .legend").text)
        assert driver.find_elements("css selector", "#chart-memory path"), svg_of(driver, "chart-memory")
        memory = requests.get(server.url + "/api/status", timeout=10).json().get("memory")
        if memory and memory.get("limit_bytes"):  # the process reports its memory: drawn against the limit
            assert driver.find_elements("css selector", "#chart-memory path.limit")
            assert "% of" in read_fresh(lambda: driver.find_element("css selector", "#chart-memory .legend").text)
        else:  # older snapshot: the page says what it draws instead
            assert "models' memory only" in text(driver, "memory-note")
        assert driver.find_elements("css selector", "#chart-queue path[data-series='shapes']")
        assert float(text(driver, "total-fps")) > 0
        # A line of several samples, not a dot.
        wait_for(driver, lambda d: d.find_element("css selector", fps_line).get_attribute("d").count("L") >= 3)

        bad = socketio.Client()
        bad.connect(server.url, transports=["websocket"])
        answer = bad.call("frame", {"model": "shapes", "image": b"not an image"}, timeout=30)
        bad.disconnect()
        assert answer["code"] == "bad_image"
        wait_for(driver, lambda d: "bad_image" in text(d, "errors"))
        def first_error(part):
            return read_fresh(lambda: driver.find_element("css selector", f"#errors li {part}").text)

        assert first_error("time")  # when it happened
        assert first_error("code") == "bad_image"
        time.sleep(3)  # a few more samples for the picture
        driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
    finally:
        stop.set()
        worker.join(timeout=30)
        driver.quit()
    assert sent and set(sent) == {"triangle"}, set(sent)


def test_capture_switches_between_two_cameras(cross_origin_server):
    """With two cameras the page offers a switch; after it, the other camera
    is streaming and answers keep coming."""
    driver = chromium(["--use-fake-device-for-media-stream=device-count=2", "--use-fake-ui-for-media-stream"])
    current = "return document.getElementById('video').srcObject.getVideoTracks()[0].label"
    answers = "return document.querySelectorAll('#labels li').length"
    try:
        driver.get(cross_origin_server.url + "/capture?model=shapes")
        wait_for(driver, lambda d: text(d, "model-status").startswith("ready"))
        driver.find_element("id", "start").click()
        wait_for(driver, lambda d: d.find_element("id", "switch").is_displayed())
        wait_for(driver, lambda d: d.execute_script(answers) > 0)
        first = driver.execute_script(current)
        driver.find_element("id", "switch").click()
        wait_for(driver, lambda d: d.execute_script(current) not in (None, first))
        driver.execute_script("document.getElementById('labels').replaceChildren()")
        wait_for(driver, lambda d: d.execute_script(answers) > 0)
        assert text(driver, "connection") == "connected"
    finally:
        driver.quit()


def test_pages_with_tokens(tmp_path):
    """With access control on, `?token=` reaches both the connection and the
    HTTP calls of /predictor.js; a wrong token is said so, not a silent page."""
    tokens = {"token-a": ["shapes"]}
    proc = ServerProcess(env={"PROJECT_TOKENS": json.dumps(tokens), "ADMIN_TOKEN": "admin-secret",
                              "MODEL_CACHE_DIR": str(tmp_path / "cache")}, log_dir=tmp_path).start()
    image = tmp_path / "square.png"
    image.write_bytes(encode(shape_image("square", seed=9, size=(300, 300)), "PNG"))
    driver = chromium()
    try:
        proc.wait_ready()
        driver.get(proc.url + "/capture?model=shapes&token=token-a")
        wait_for(driver, lambda d: text(d, "model-status").startswith("ready"))
        driver.find_element("id", "file").send_keys(str(image))
        wait_for(driver, lambda d: top_label(d) == "square")

        driver.get(proc.url + "/capture?model=shapes&token=wrong")
        wait_for(driver, lambda d: text(d, "connection") == "cannot connect")
        assert "not allowed" in text(driver, "message")

        driver.get(proc.url + "/dashboard?token=admin-secret")
        wait_for(driver, lambda d: d.find_element("id", "connection").text == "● live")
        wait_for(driver, lambda d: text(d, "processes") == "1")
    finally:
        driver.quit()
        proc.stop()
