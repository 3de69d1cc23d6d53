"""`GET /`: the models (input size, number of labels, state), an upload form, an
image-URL form and links to `/capture`, used in real headless Chromium.

The image URL is served by a static HTTP server of the test's own on
loopback, which the server may fetch from because `URL_FETCH_ALLOW` lists it.
"""

from __future__ import annotations

import http.server
import threading
from functools import partial

import pytest
import requests

from images import encode, shape_image
from serverproc import ServerProcess, free_port
from test_browser import chromium, read_fresh, wait_for


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("index-pictures")
    (root / "star.png").write_bytes(encode(shape_image("star", seed=21, size=(300, 300)), "PNG"))
    port = free_port()
    site = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), partial(http.server.SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{port}"
    site.shutdown()
    site.server_close()


@pytest.fixture(scope="module")
def server(model_store, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("index-page")
    with ServerProcess(log_dir=workdir, env={"MODEL_STORE": str(model_store), "DEFAULT_MODEL": "shapes",
                                             "URL_FETCH_ALLOW": "127.0.0.1",
                                             "MODEL_CACHE_DIR": str(workdir / "cache")}) as proc:
        proc.start()
        proc.wait_ready()
        yield proc


def row(driver, model):
    cells = read_fresh(lambda: [c.text for c in driver.find_elements(
        "css selector", f"#models tr[data-model='{model}'] td")])
    return dict(zip(["name", "version", "state", "input", "labels", "link"], cells))


def test_index_lists_models_with_their_state_and_labels_uploads_and_urls(server, pictures, tmp_path):
    root, site = pictures
    # A model that cannot load, tried once, is listed as failed.
    failed = requests.post(server.url + "/api/models/broken/predict",
                           files={"file": ("s.png", (root / "star.png").read_bytes(), "image/png")}, timeout=60)
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "model_unavailable"
    upload = tmp_path / "square.png"
    upload.write_bytes(encode(shape_image("square", seed=22, size=(300, 300)), "PNG"))
    driver = chromium(window=(1200, 900))
    try:
        driver.get(server.url + "/")
        shapes, tiny, broken = row(driver, "shapes"), row(driver, "tiny"), row(driver, "broken")
        assert shapes["state"] == "loaded" and shapes["labels"] == "4", shapes
        assert shapes["input"] == "64×64×3", shapes
        assert shapes["version"], shapes
        assert tiny["state"] == "in store" and tiny["labels"] == "–", tiny  # known once loaded
        assert broken["state"] == "failed", broken
        link = driver.find_element("css selector", "#models tr[data-model='tiny'] a")
        assert link.get_attribute("href") == server.url + "/capture?model=tiny"

        # The upload form: the default model is chosen; the answer appears on the page.
        chosen = driver.find_element("css selector", "#upload select")
        assert chosen.get_attribute("value") == "shapes"
        driver.find_element("css selector", "#upload input[type=file]").send_keys(str(upload))
        driver.find_element("css selector", "#upload button").click()
        wait_for(driver, lambda d: d.find_element("id", "result").text.split("  ")[0] == "square", timeout=60)

        # The image-URL form: fetched by the server, labelled.
        driver.find_element("css selector", "#by-url input[name=url]").send_keys(f"{site}/star.png")
        driver.find_element("css selector", "#by-url button").click()
        wait_for(driver, lambda d: d.find_element("id", "result").text.split("  ")[0] == "star", timeout=60)
    finally:
        driver.quit()
