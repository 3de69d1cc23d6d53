"""`POST /api/models/<name>/predict` with `{"url": ...}`: fetched server-side, safely."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest
import requests

from images import encode, shape_image
from serverproc import ServerProcess, free_port

PICTURE = encode(shape_image("circle", seed=77, size=(200, 150)))


class Images(http.server.BaseHTTPRequestHandler):
    """/pic.jpg, /big (5 MB), /redirect/N (N hops then the picture), /missing,
    /silent (answers nothing for a minute), /trickle (a byte every 0.2 s for a minute)."""

    #: Host headers of the requests for /pic.jpg, in order.
    hosts: list[str] = []

    def do_GET(self):
        if self.path == "/pic.jpg":
            Images.hosts.append(self.headers.get("Host"))
            self._send(200, PICTURE, "image/jpeg")
        elif self.path == "/big":
            self._send(200, b"\xff" * (5 * 1024 * 1024), "image/jpeg")
        elif self.path.startswith("/redirect/"):
            hops = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", "/pic.jpg" if hops <= 1 else f"/redirect/{hops - 1}")
            self.end_headers()
        elif self.path == "/silent":
            time.sleep(60)
            self._send(200, PICTURE, "image/jpeg")
        elif self.path == "/trickle":
            # Every read gets a byte well within any read timeout: only a
            # deadline for the whole fetch ends it.
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", "300")
            self.end_headers()
            try:
                for _ in range(300):
                    self.wfile.write(b"\xff")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:  # the server gave up on us, as it should
                pass
        else:
            self._send(404, b"no", "text/plain")

    def _send(self, status, body, kind):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def images_site():
    port = free_port()
    site = http.server.ThreadingHTTPServer(("127.0.0.1", port), Images)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}"
    site.shutdown()


#: Short, so the tests of the deadline are quick; far above what a local fetch takes.
FETCH_TIMEOUT = 3


@pytest.fixture(scope="module")
def trusting_server(tmp_path_factory):
    """A server that trusts loopback for URL fetches (as a private deployment would)."""
    workdir = tmp_path_factory.mktemp("urlfetch")
    with ServerProcess(env={"URL_FETCH_ALLOW": "127.0.0.1/32", "MODEL_CACHE_DIR": str(workdir),
                            "URL_FETCH_TIMEOUT": str(FETCH_TIMEOUT)}, log_dir=workdir) as proc:
        proc.start()
        proc.wait_ready()
        yield proc


def predict(server, url):
    return requests.post(f"{server.url}/api/models/shapes/predict", json={"url": url}, timeout=30)


def test_url_is_fetched_and_labelled(trusting_server, images_site):
    response = predict(trusting_server, images_site + "/pic.jpg")
    assert response.status_code == 200, response.text
    assert response.json()["labels"][0]["label"] == "circle"


def test_redirects_are_followed_up_to_three(trusting_server, images_site):
    assert predict(trusting_server, images_site + "/redirect/3").status_code == 200
    too_many = predict(trusting_server, images_site + "/redirect/5")
    assert too_many.status_code == 400 and "redirect" in too_many.json()["error"]["message"]


def test_fetch_errors(trusting_server, images_site):
    big = predict(trusting_server, images_site + "/big")
    assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"
    missing = predict(trusting_server, images_site + "/missing")
    assert missing.status_code == 400 and "404" in missing.json()["error"]["message"]
    for url in ("ftp://127.0.0.1/pic.jpg", "file:///etc/passwd", "not a url", 42):
        response = predict(trusting_server, url)
        assert response.status_code == 400 and response.json()["error"]["code"] == "bad_request", url
    assert predict(trusting_server, images_site + "/pic.jpg").status_code == 200


# Only loopback forms go to the running server: if the guard failed, nothing
# would leave this machine. Other ranges are checked on the policy below.
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "0x7f.1", "[::1]", "0.0.0.0"])
def test_private_and_loopback_hosts_are_refused_by_default(server, host, images_site):
    port = images_site.rsplit(":", 1)[1]
    response = predict(server, f"http://{host}:{port}/pic.jpg")
    assert response.status_code == 400, response.text
    assert "not allowed" in response.json()["error"]["message"]


@pytest.mark.parametrize("address", ["10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                                     "224.0.0.1", "240.0.0.1", "fd00:ec2::254", "fe80::1", "::ffff:127.0.0.1",
                                     "::ffff:10.0.0.1"])
def test_policy_refuses_non_public_addresses(address):
    import ipaddress

    from webapp.errors import BadRequest
    from webapp.frames.url_fetch import UrlPolicy

    with pytest.raises(BadRequest):
        UrlPolicy().check_address("example.test", ipaddress.ip_address(address))


def test_policy_allows_public_addresses_and_the_allow_list():
    import ipaddress

    from webapp.frames.url_fetch import UrlPolicy

    UrlPolicy().check_address("example.test", ipaddress.ip_address("93.184.215.14"))
    UrlPolicy(["10.0.0.0/8"]).check_address("intranet", ipaddress.ip_address("10.1.2.3"))
    UrlPolicy(["intranet.local"]).check_address("intranet.local", ipaddress.ip_address("192.168.0.5"))


@pytest.mark.parametrize("path", ["/silent", "/trickle"])
def test_url_fetch_timeout_bounds_the_whole_fetch(trusting_server, images_site, path):
    """A site that never answers, and one that keeps every read alive but never
    finishes: both end at URL_FETCH_TIMEOUT with `bad_request`, while the site
    would have kept the fetch for a minute (the client here waits 20 s at most)."""
    response = requests.post(f"{trusting_server.url}/api/models/shapes/predict",
                             json={"url": images_site + path}, timeout=20)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "bad_request" and ("too long" in error["message"] or "Timeout" in error["message"]), error
    assert predict(trusting_server, images_site + "/pic.jpg").json()["labels"][0]["label"] == "circle"


def test_the_connection_goes_to_the_checked_address(images_site, monkeypatch):
    """DNS rebinding: the name resolves to an allowed address when checked and
    to another one afterwards. The fetch connects to the address it checked
    (the only one where the picture is) and sends the name as Host."""
    from webapp.frames import url_fetch as urlfetch

    port = int(images_site.rsplit(":", 1)[1])
    real_getaddrinfo = socket.getaddrinfo
    answers = []

    def rebinding_getaddrinfo(host, *args, **kwargs):
        if host != "pictures.test":
            return real_getaddrinfo(host, *args, **kwargs)
        # First answer: the site's address; any later one: an address where nothing listens.
        address = "127.0.0.1" if not answers else "127.0.0.2"
        answers.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_getaddrinfo)
    Images.hosts.clear()
    body = urlfetch.fetch(f"http://pictures.test:{port}/pic.jpg", urlfetch.UrlPolicy(["127.0.0.1/32"]))
    assert body == PICTURE
    assert answers == ["127.0.0.1"]  # resolved once, when it was checked
    assert Images.hosts == [f"pictures.test:{port}"]
    # The check itself used that answer: without the allow-list it is refused, nothing fetched.
    answers.clear()
    with pytest.raises(urlfetch.BadRequest):
        urlfetch.fetch(f"http://pictures.test:{port}/pic.jpg", urlfetch.UrlPolicy())
    assert Images.hosts == [f"pictures.test:{port}"]
