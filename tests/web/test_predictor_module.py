"""`/predictor.js`'s own refusals and pacing, in real headless Chromium.

The README promises client-side rejections `timeout`, `busy` (more than 32
waiting) and `bad_image` (a source with no readable pixels), and that
`stream()` backs off on `rate_limited` / `overloaded`. A page on another
origin (a static server on another port) imports the module from the real
server and the tests drive it with small scripts.

The server runs with `tests/hooks` (callsignals.py): a model call signals
when it starts and waits while the test holds the model, so "the answer has
not come yet" and "the server is full" are made for certain, not by timing.
What reached the server is counted from `/metrics` (`webapp_frames_total`).
"""

from __future__ import annotations

import http.server
import threading
from functools import partial

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from callsignals import SignallingServer
from images import encode, shape_image
from serverproc import ServerProcess, free_port
from test_browser import chromium, wait_for

HARNESS = """<!doctype html>
<meta charset="utf-8"><title>predictor.js harness</title>
<script type="module">
  const server = new URLSearchParams(location.search).get("server");
  const module = await import(server + "/predictor.js");
  window.Predictor = module.Predictor;
  window.PredictionError = module.PredictionError;
  window.server = server;
  // A readable frame: a drawn shape on a canvas.
  window.shapeCanvas = () => {
    const canvas = document.createElement("canvas");
    canvas.width = 160; canvas.height = 120;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "white"; ctx.fillRect(0, 0, 160, 120);
    ctx.fillStyle = "black"; ctx.beginPath(); ctx.arc(80, 60, 40, 0, 2 * Math.PI); ctx.fill();
    return canvas;
  };
  window.connected = (predictor) => predictor.connected ? Promise.resolve()
    : new Promise((resolve) => { const off = predictor.on("connect", () => { off(); resolve(); }); });
  window.settle = (promise) => promise.then(
    (label) => ({ ok: true, label }),
    (err) => ({ ok: false, isPredictionError: err instanceof window.PredictionError, code: err.code, message: err.message }));
  window.harnessReady = true;
</script>
"""

#: Milliseconds of timer slack allowed below a back-off (timers never fire
#: early by more than clock rounding; without back-off the gaps are ~17 ms).
SLACK_MS = 5


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A plain static HTTP server on another port: another origin."""
    root = tmp_path_factory.mktemp("predictor-site")
    (root / "harness.html").write_text(HARNESS)
    port = free_port()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def held(site, model_store, tmp_path_factory):
    """A server whose model calls can be held; one waiting frame fills it."""
    workdir = tmp_path_factory.mktemp("predictor-held")
    calls = workdir / "calls"
    calls.mkdir()
    with SignallingServer(calls, log_dir=workdir,
                          env={"MODEL_STORE": str(model_store), "DEFAULT_MODEL": "shapes",
                               "MAX_WAITING_FRAMES": "1", "CORS_ORIGINS": site,
                               "MODEL_CACHE_DIR": str(workdir / "cache")}) as proc:
        proc.start()
        proc.wait_ready()
        yield proc


@pytest.fixture(scope="module")
def limited(site, model_store, tmp_path_factory):
    """A server that allows one frame per 5 s per client."""
    workdir = tmp_path_factory.mktemp("predictor-limited")
    with ServerProcess(log_dir=workdir, env={"MODEL_STORE": str(model_store), "DEFAULT_MODEL": "shapes",
                                             "MAX_FPS_PER_CLIENT": "0.2", "CORS_ORIGINS": site,
                                             "MODEL_CACHE_DIR": str(workdir / "cache")}) as proc:
        proc.start()
        proc.wait_ready()
        yield proc


@pytest.fixture
def browser():
    driver = chromium()
    driver.set_script_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()


def open_harness(driver, site, server_url):
    driver.get(f"{site}/harness.html?server={server_url}")
    wait_for(driver, lambda d: d.execute_script("return window.harnessReady === true"))


def run(driver, body: str, *args):
    """Run an async function body in the page; `done(value)` is its return."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"(async () => {{ {body} }})().then(done, (e) => done({{failure: String(e && (e.stack || e))}}));", *args)


def frames_answered(server) -> float:
    """Every frame the server answered, whatever the outcome."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == "webapp_frames_total")


def test_sources_without_readable_pixels_are_rejected_bad_image_before_sending(held, site, browser):
    open_harness(browser, site, held.url)
    before = frames_answered(held)
    outcome = run(browser, """
        const predictor = new Predictor(server, { model: "shapes" });
        await connected(predictor);
        const empty = document.createElement("canvas");
        empty.width = 0; empty.height = 0;
        const missing = new Image();
        missing.src = "no-such-picture.png";            // a 404: nothing to decode
        const idle = document.createElement("video");     // never played: no frame yet
        const results = {
          empty: await settle(predictor.predict(empty)),
          missing: await settle(predictor.predict(missing)),
          idle: await settle(predictor.predict(idle)),
          good: await settle(predictor.predict(shapeCanvas())),
        };
        predictor.close();
        return results;
    """)
    assert "failure" not in outcome, outcome
    for name in ("empty", "missing", "idle"):
        result = outcome[name]
        assert result["isPredictionError"] and result["code"] == "bad_image" and result["message"], (name, result)
    assert outcome["good"]["ok"] and outcome["good"]["label"]["labels"][0]["label"] == "circle", outcome["good"]
    # Refused in the browser: only the good frame ever reached the server.
    assert frames_answered(held) == before + 1


def test_an_answer_that_does_not_come_in_time_rejects_timeout(held, site, browser):
    open_harness(browser, site, held.url)
    calls_before = len(held.started_calls("shapes"))
    answered_before = frames_answered(held)
    held.hold("shapes")
    try:
        outcome = run(browser, """
            const predictor = new Predictor(server, { model: "shapes", timeoutMs: 1500 });
            await connected(predictor);
            window.latePredictor = predictor;
            return await settle(predictor.predict(shapeCanvas()));
        """)
        # The frame reached the model, whose answer was still held: the timeout is the browser's.
        assert held.started_calls("shapes")[calls_before:] == [1], held.started_calls("shapes")
    finally:
        held.release("shapes")
    assert outcome.get("isPredictionError") and outcome["code"] == "timeout", outcome
    assert "1500" in outcome["message"]
    # The server did answer, late (counted once the model was let go); the page drops
    # that answer, and the same predictor goes on working.
    wait_for(browser, lambda d: frames_answered(held) == answered_before + 1, timeout=60)
    again = run(browser, "const r = await settle(window.latePredictor.predict(shapeCanvas()));"
                         "window.latePredictor.close(); return r;")
    assert again["ok"] and again["label"]["labels"][0]["label"] == "circle", again

    # Never connected at all (nothing listens there): `timeout` too, after timeoutMs.
    nowhere = f"http://127.0.0.1:{free_port()}"
    outcome = run(browser, """
        const predictor = new Predictor(arguments[0], { model: "shapes", timeoutMs: 1000 });
        const result = await settle(predictor.predict(shapeCanvas()));
        predictor.close();
        return result;
    """, nowhere)
    assert outcome.get("isPredictionError") and outcome["code"] == "timeout", outcome


BURST = """
    // 33 predictions started in one go: frames already encoded, so all 33 reach
    // the bound check before any answer could arrive.
    const predictor = new Predictor(arguments[0], { model: "shapes", timeoutMs: arguments[1] });
    if (arguments[2]) await connected(predictor);
    const frame = new Uint8Array(await (await new Promise((r) => shapeCanvas().toBlob(r, "image/jpeg"))).arrayBuffer());
    const order = [];
    const results = await Promise.all(Array.from({ length: 33 }, (_, i) =>
        settle(predictor.predict(frame.slice())).then((r) => { order.push(i); return r; })));
    predictor.close();
    return { results, firstSettled: order[0] };
"""


def test_more_than_32_waiting_predictions_are_refused_busy(held, site, browser):
    open_harness(browser, site, held.url)
    # Connected: 32 frames are sent and wait for answers (the model is held); the 33rd is refused.
    before = frames_answered(held)
    held.hold("shapes")
    try:
        browser.execute_script("window.burst = null;")
        browser.execute_script(f"""
            (async () => {{ {BURST} }})(...arguments).then((v) => {{ window.burst = v; }},
                                                           (e) => {{ window.burst = {{failure: String(e)}}; }});
        """, held.url, 60000, True)
        held.wait_for_calls("shapes", len(held.started_calls("shapes")) + 1)  # the first frame is held
    finally:
        held.release("shapes")
    outcome = wait_for(browser, lambda d: d.execute_script("return window.burst"), timeout=120)
    assert "failure" not in outcome, outcome
    codes = [r["code"] if not r["ok"] else "label" for r in outcome["results"]]
    assert codes[32] == "busy" and codes.count("busy") == 1, codes
    assert outcome["firstSettled"] == 32, outcome["firstSettled"]  # refused before anything was answered
    assert outcome["results"][32]["isPredictionError"] and "32" in outcome["results"][32]["message"]
    # What reached the server: 32 frames, each answered (one label, the rest refused or superseded).
    assert "label" in codes[:32] and "busy" not in codes[:32], codes
    wait_for(browser, lambda d: frames_answered(held) == before + 32, timeout=30)

    # Not connected: frames waiting for the connection count against the same bound.
    nowhere = f"http://127.0.0.1:{free_port()}"
    outcome = run(browser, BURST, nowhere, 2000, False)
    assert "failure" not in outcome, outcome
    codes = [r["code"] for r in outcome["results"]]
    assert codes == ["timeout"] * 32 + ["busy"], codes
    assert outcome["firstSettled"] == 32


STREAM = """
    // stream() a playing video; record when each frame leaves and what came back.
    const predictor = new Predictor(arguments[0], { model: "shapes" });
    await connected(predictor);
    const canvas = shapeCanvas();
    const video = document.createElement("video");
    video.muted = true;
    video.srcObject = canvas.captureStream(30);
    await video.play();
    const log = [];
    // When each frame is taken from the video: what the stream schedules (the
    // JPEG encoding after it takes a varying time, so emits are less regular).
    const encode = predictor._encode.bind(predictor);
    predictor._encode = (source) => { log.push({ sent: performance.now() }); return encode(source); };
    predictor.on("error", (err) => log.push({ code: err.code, at: performance.now() }));
    return await new Promise((resolve) => {
      const stop = predictor.stream(video, (label) => log.push({ code: "label", at: performance.now() }), { fps: 60 });
      const check = setInterval(() => {
        if (log.filter((e) => e.code === arguments[1]).length >= 5) {
          clearInterval(check); stop(); predictor.close(); resolve(log);
        }
      }, 20);
    });
"""


def backoff_gaps(log, code):
    """Gaps between consecutive sends, each paired with the answer to the first of the two."""
    sends = [i for i, entry in enumerate(log) if "sent" in entry]
    pairs = []
    for a, b in zip(sends, sends[1:]):
        answers = [entry["code"] for entry in log[a + 1:b] if "code" in entry]
        pairs.append((answers, log[b]["sent"] - log[a]["sent"]))
    return pairs


def assert_backs_off(log, code):
    pairs = backoff_gaps(log, code)
    streak = 0
    doubled = []
    for answers, gap in pairs:
        if answers == [code]:
            streak += 1
            expected = min(200 * 2 ** (streak - 1), 5000)
            doubled.append((round(gap), expected))
            assert gap >= expected - SLACK_MS, (doubled, log)
        else:
            streak = 0
    # At least four refusals in a row, each followed by a longer wait: 200, 400, 800, 1600 ms.
    assert [e for _, e in doubled][:4] == [200, 400, 800, 1600], (doubled, log)


def test_stream_backs_off_while_the_server_answers_overloaded(held, site, browser):
    open_harness(browser, site, held.url)
    held.hold("shapes")
    try:
        with held.client() as other:
            # Another client's frame fills the server (MAX_WAITING_FRAMES=1) and stays in the model.
            other.emit("frame", {"model": "shapes", "image": encode(shape_image("star")), "id": "held"})
            held.wait_for_calls("shapes", len(held.started_calls("shapes")) + 1)
            log = run(browser, STREAM, held.url, "overloaded")
            held.release("shapes")
            assert other.next("label", timeout=60)["id"] == "held"
    finally:
        held.release("shapes")
    assert "failure" not in log, log
    assert_backs_off(log, "overloaded")


def test_stream_backs_off_while_the_server_answers_rate_limited(limited, site, browser):
    open_harness(browser, site, limited.url)
    log = run(browser, STREAM, limited.url, "rate_limited")
    assert "failure" not in log, log
    assert_backs_off(log, "rate_limited")
    # The first frame was within the rate and labelled; then the client waited longer each time.
    assert [entry["code"] for entry in log if "code" in entry][0] == "label", log


def test_a_prediction_waiting_when_the_connection_goes_rejects_disconnected(held, site, browser):
    open_harness(browser, site, held.url)
    before = len(held.started_calls("shapes"))
    held.hold("shapes")
    try:
        browser.execute_script("""
            window.dropped = null;
            const predictor = new Predictor(arguments[0], { model: "shapes", timeoutMs: 60000 });
            window.dropping = predictor;
            connected(predictor).then(() => settle(predictor.predict(shapeCanvas()))).then((r) => { window.dropped = r; });
        """, held.url)
        held.wait_for_calls("shapes", before + 1)  # in the model, its answer held back
        browser.execute_script("window.dropping.close();")  # the connection goes meanwhile
        outcome = wait_for(browser, lambda d: d.execute_script("return window.dropped"), timeout=30)
        after = run(browser, "return await settle(window.dropping.predict(shapeCanvas()));")
    finally:
        held.release("shapes")
    # Rejected at once, not after the 60 s timeout: the answer cannot come any more.
    assert outcome.get("isPredictionError") and outcome["code"] == "disconnected", outcome
    assert after.get("isPredictionError") and after["code"] == "disconnected", after
