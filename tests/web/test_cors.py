"""Which origins may connect: the server's own always, CORS_ORIGINS added, scripts (no Origin) always.

Every combination is checked on the real server, once per configuration:
no CORS_ORIGINS, a list (in both async modes) and "*". Engine.IO's handshake
and /api/* with raw HTTP (so the Host, Origin and X-Forwarded-* headers are
exactly what a browser or a proxy sends), real python-socketio clients on
both transports, the webapp_client package, and one headless Chromium run:
the server's own page, a listed front end and an unlisted one.
"""

from __future__ import annotations

import http.server
import threading
from functools import partial

import pytest
import requests
import socketio

from images import encode, shape_image
from serverproc import ServerProcess, free_port

ALLOWED = "http://projects.example:8000"
OTHER = "http://elsewhere.example:9000"

#: (CORS_ORIGINS, async mode). The trailing slash and default port are
#: normalised away: a browser sends "http://second.example".
CONFIGS = {
    "none-eventlet": ("", "eventlet"),
    "listed-threading": (f"{ALLOWED},http://second.example:80/", "threading"),
    "listed-eventlet": (f"{ALLOWED},http://second.example:80/", "eventlet"),
    "wildcard-threading": ("*", "threading"),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def origin_server(request, tmp_path_factory):
    origins, mode = CONFIGS[request.param]
    workdir = tmp_path_factory.mktemp(request.param)
    proc = ServerProcess(env={"CORS_ORIGINS": origins, "MODEL_CACHE_DIR": str(workdir)},
                         log_dir=workdir, async_mode=mode).start()
    proc.config = request.param.split("-")[0]
    yield proc
    proc.stop()


def accepts(server, kind: str) -> bool:
    """What the configuration promises for an origin of this kind."""
    if kind in ("none", "own", "own-by-name", "forwarded"):
        return True
    if kind in ("listed", "listed-normalised"):
        return server.config in ("listed", "wildcard")
    return server.config == "wildcard"  # other, other-port, null


def origin_cases(server) -> dict[str, dict]:
    """Request headers per kind of origin."""
    own_host = f"127.0.0.1:{server.port}"
    return {
        "none": {},
        "own": {"Origin": server.url},
        # Opened as http://localhost:PORT: the Host header says so, and so does the Origin.
        "own-by-name": {"Host": f"localhost:{server.port}", "Origin": f"http://localhost:{server.port}"},
        # Behind a TLS proxy: the page's origin is the public one the proxy forwards.
        "forwarded": {"Host": own_host, "X-Forwarded-Proto": "https", "X-Forwarded-Host": "public.example",
                      "Origin": "https://public.example"},
        "listed": {"Origin": ALLOWED},
        "listed-normalised": {"Origin": "http://second.example"},
        "other": {"Origin": OTHER},
        "other-port": {"Origin": "http://127.0.0.1:1"},
        "null": {"Origin": "null"},
    }


def handshake(server, headers):
    return requests.get(server.url + "/socket.io/", params={"EIO": "4", "transport": "polling"},
                        headers=headers, timeout=10)


def test_engineio_handshake_for_every_kind_of_origin(origin_server):
    outcomes = {}
    for kind, headers in origin_cases(origin_server).items():
        answer = handshake(origin_server, headers)
        outcomes[kind] = answer.status_code
        if accepts(origin_server, kind) and "Origin" in headers:
            # The browser reads the answer only if it names its origin.
            assert answer.headers.get("Access-Control-Allow-Origin") == headers["Origin"], kind
    expected = {kind: 200 if accepts(origin_server, kind) else 400 for kind in outcomes}
    assert outcomes == expected


def connect(server, transport, headers=None):
    client = socketio.Client(reconnection=False)
    client.connect(server.url, transports=[transport], headers=headers or {}, wait_timeout=10)
    return client


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_python_socketio_clients_as_scripts_connect(origin_server, transport):
    # websocket-client sends the server's own origin, requests (polling) none.
    client = connect(origin_server, transport)
    assert client.call("models", timeout=30)["models"]
    client.disconnect()


def test_python_socketio_polling_with_an_origin(origin_server):
    for kind in ("own", "listed", "other"):
        headers = origin_cases(origin_server)[kind]
        if accepts(origin_server, kind):
            client = connect(origin_server, "polling", headers)
            assert client.call("models", timeout=30)["models"], kind
            client.disconnect()
        else:
            with pytest.raises(socketio.exceptions.ConnectionError):
                connect(origin_server, "polling", headers)


def test_websocket_handshake_for_every_kind_of_origin(origin_server):
    """Raw WebSocket upgrades, one Origin header each, as a browser sends them.

    (python-socketio cannot be given another Origin for WebSocket: websocket-client
    adds its own beside it.)"""
    import websocket

    outcomes = {}
    url = origin_server.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    for kind in ("own", "listed", "listed-normalised", "other", "other-port", "null"):
        origin = origin_cases(origin_server)[kind]["Origin"]
        try:
            ws = websocket.create_connection(url, origin=origin, timeout=10)
        except websocket.WebSocketBadStatusException as exc:
            outcomes[kind] = exc.status_code
        else:
            assert ws.recv().startswith("0{")  # Engine.IO's open packet
            ws.close()
            outcomes[kind] = 101
    assert outcomes == {kind: 101 if accepts(origin_server, kind) else 400 for kind in outcomes}


def test_the_client_package_connects_and_predicts(origin_server):
    from webapp_client import Client

    with Client(origin_server.url, timeout=120) as client:
        label = client.predict(encode(shape_image("square", seed=8)), model="shapes")
    assert label["labels"][0]["label"] == "square"


def test_http_api_for_every_kind_of_origin(origin_server):
    for kind, headers in origin_cases(origin_server).items():
        answer = requests.get(origin_server.url + "/api/models", headers=headers, timeout=30)
        assert answer.status_code == 200, kind  # CORS is the browser's check: the server answers everyone
        granted = answer.headers.get("Access-Control-Allow-Origin")
        if kind in ("listed", "listed-normalised", "other", "other-port", "null"):
            if accepts(origin_server, kind):
                assert granted in (headers["Origin"], "*"), kind
            else:
                assert granted is None, kind
    # A page of the server's own origin posting a frame (browsers send Origin on POST).
    image = encode(shape_image("circle", seed=9))
    posted = requests.post(origin_server.url + "/api/models/shapes/predict", files={"file": ("c.jpg", image)},
                           headers={"Origin": origin_server.url}, timeout=120)
    assert posted.status_code == 200 and posted.json()["labels"][0]["label"] == "circle"
    preflight = requests.options(origin_server.url + "/api/models/shapes/predict", timeout=10, headers={
        "Origin": ALLOWED, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    if accepts(origin_server, "listed"):
        assert preflight.headers.get("Access-Control-Allow-Origin") in (ALLOWED, "*")
        assert "POST" in preflight.headers.get("Access-Control-Allow-Methods", "")
    else:
        assert "Access-Control-Allow-Origin" not in preflight.headers


def test_origins_are_compared_normalised():
    from webapp.web.cors import OriginPolicy, normalise_origin

    assert normalise_origin("HTTPS://A.Example:443/") == "https://a.example"
    assert normalise_origin("http://a.example:8080") == "http://a.example:8080"
    assert normalise_origin("http://[::1]:80") == "http://[::1]"
    assert normalise_origin("null") == "null"
    assert normalise_origin("http://a.example:notaport") == "http://a.example:notaport"
    policy = OriginPolicy(["https://a.example:443/"])
    environ = {"wsgi.url_scheme": "http", "HTTP_HOST": "server.example:5000"}
    assert policy("https://a.example", environ) and policy("http://server.example:5000", environ)
    assert not policy("https://b.example", environ) and not policy("null", environ)
    assert policy(None, environ)  # no Origin: a script, never refused
    assert not policy("http://server.example:5000")  # no request to compare with: only the list


def test_wildcard_with_credentials_is_refused():
    from webapp.config import load_config

    with pytest.raises(ValueError, match="CORS_ORIGINS"):
        load_config({"CORS_ORIGINS": ["*"], "CORS_CREDENTIALS": True})


# --- a real browser -----------------------------------------------------------------

#: Loads the vendored Socket.IO client from the server and connects with each
#: transport; returns {"websocket": "ok" | "refused: ...", "polling": ...}.
BROWSER_CONNECT = """
const [server, done] = [arguments[0], arguments[arguments.length - 1]];
const script = document.createElement("script");
script.src = server + "/static/vendor/socket.io-client/socket.io.min.js";
script.onerror = () => done({script: "failed to load"});
script.onload = () => {
  const results = {};
  const finish = (transport, outcome, socket) => {
    if (transport in results) return;
    results[transport] = outcome;
    socket.close();
    if (Object.keys(results).length === 2) done(results);
  };
  for (const transport of ["websocket", "polling"]) {
    const socket = io(server, {transports: [transport], reconnection: false, forceNew: true});
    socket.on("connect", () => socket.emit("models", (answer) =>
      finish(transport, answer && answer.models ? "ok" : JSON.stringify(answer), socket)));
    socket.on("connect_error", (error) => finish(transport, "refused: " + error.message, socket));
  }
};
document.head.appendChild(script);
"""


def static_site(directory):
    port = free_port()
    site = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), partial(http.server.SimpleHTTPRequestHandler, directory=str(directory)))
    threading.Thread(target=site.serve_forever, daemon=True).start()
    return site, f"http://127.0.0.1:{port}"


def test_chromium_own_page_listed_and_unlisted_front_ends(tmp_path):
    from test_browser import chromium

    (tmp_path / "index.html").write_text("<!doctype html><title>front end</title><p>front end</p>")
    listed_site, listed = static_site(tmp_path)
    unlisted_site, unlisted = static_site(tmp_path)
    server = ServerProcess(env={"CORS_ORIGINS": listed, "MODEL_CACHE_DIR": str(tmp_path / "cache")},
                           log_dir=tmp_path, async_mode="eventlet").start()
    driver = chromium()
    driver.set_script_timeout(60)
    try:
        seen = {}
        for name, page in (("own", server.url + "/"), ("listed", listed + "/index.html"),
                           ("unlisted", unlisted + "/index.html")):
            driver.get(page)
            seen[name] = driver.execute_async_script(BROWSER_CONNECT, server.url)
        assert seen["own"] == {"websocket": "ok", "polling": "ok"}
        assert seen["listed"] == {"websocket": "ok", "polling": "ok"}
        assert all(outcome.startswith("refused") for outcome in seen["unlisted"].values()), seen["unlisted"]
    finally:
        driver.quit()
        server.stop()
        listed_site.shutdown()
        unlisted_site.shutdown()
