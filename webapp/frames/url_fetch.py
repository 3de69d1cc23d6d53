"""Fetching an image from a URL a user gave, safely (server-side request forgery).

The rules, all enforced here:

* http and https only, to any port;
* the host is resolved once and refused when any of its addresses is
  loopback, private, link-local, multicast, reserved, unspecified or a cloud
  metadata address; numeric forms (``2130706433``, ``0x7f.1``) resolve to the
  same addresses and are refused the same way;
* the connection goes to the address that was checked (the host name is only
  used for the Host header and TLS), so a second DNS answer cannot redirect it;
* redirects are followed by hand, each re-checked, at most ``MAX_REDIRECTS``;
* a size cap (the frame limit) and a total deadline for the whole fetch;
* ``URL_FETCH_ALLOW`` lists host names or networks trusted anyway (tests,
  private deployments).

urllib3 is used directly because it lets us connect to one address while
presenting another name for TLS, which `requests` does not expose.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urljoin, urlsplit

from ..errors import BadRequest, TooLarge

MAX_REDIRECTS = 3
REDIRECT_CODES = (301, 302, 303, 307, 308)
METADATA_ADDRESSES = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
                      ipaddress.ip_address("100.100.100.200")}


class UrlPolicy:
    def __init__(self, allow: list[str] | None = None, max_bytes: int = 4 << 20, deadline: float = 10.0):
        self.allowed_hosts = set()
        self.allowed_networks = []
        for item in allow or []:
            try:
                self.allowed_networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.allowed_hosts.add(item.lower())
        self.max_bytes = max_bytes
        self.deadline = deadline

    def check_address(self, host: str, address) -> None:
        if host.lower() in self.allowed_hosts or any(address in net for net in self.allowed_networks):
            return
        mapped = getattr(address, "ipv4_mapped", None)
        candidate = mapped or address
        if (candidate.is_loopback or candidate.is_private or candidate.is_link_local or candidate.is_multicast
                or candidate.is_reserved or candidate.is_unspecified or candidate in METADATA_ADDRESSES
                or not candidate.is_global):
            raise BadRequest(f"Fetching from {host} is not allowed: it resolves to a non-public address.")


def _resolve(host: str, port: int) -> list:
    # Numeric hosts in every form libc accepts (2130706433, 0x7f.1, 127.1):
    # decided here, the same way whichever resolver is in use (eventlet's
    # green resolver does not parse these forms).
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        return [ipaddress.ip_address(socket.inet_aton(host))]
    except OSError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise BadRequest(f"The host {host!r} cannot be resolved.") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))


def fetch(url: str, policy: UrlPolicy) -> bytes:
    """The body of `url` (after safe redirects), at most `policy.max_bytes`."""
    import certifi
    import urllib3

    if not isinstance(url, str) or len(url) > 2048:
        raise BadRequest("'url' must be a string of at most 2048 characters.")
    deadline = time.monotonic() + policy.deadline
    for _ in range(MAX_REDIRECTS + 1):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadRequest("Only http and https URLs can be fetched.")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise BadRequest("The URL has an invalid port.") from None
        host = parts.hostname
        addresses = _resolve(host, port)
        for address in addresses:
            policy.check_address(host, address)
        target = str(addresses[0])
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BadRequest("Fetching the image took too long.")
        timeout = urllib3.Timeout(connect=min(5.0, remaining), read=remaining)
        if parts.scheme == "https":
            pool = urllib3.HTTPSConnectionPool(target, port, timeout=timeout, retries=False, maxsize=1,
                                               server_hostname=host, assert_hostname=host,
                                               cert_reqs="CERT_REQUIRED", ca_certs=certifi.where())
        else:
            pool = urllib3.HTTPConnectionPool(target, port, timeout=timeout, retries=False, maxsize=1)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = host if parts.port is None else f"{host}:{parts.port}"
        try:
            response = pool.urlopen("GET", path, headers={"Host": host_header, "Accept": "image/*"},
                                    redirect=False, preload_content=False)
        except urllib3.exceptions.HTTPError as exc:
            raise BadRequest(f"The image could not be fetched: {type(exc).__name__}.") from None
        try:
            if response.status in REDIRECT_CODES and response.headers.get("Location"):
                url = urljoin(url, response.headers["Location"])
                continue
            if response.status != 200:
                raise BadRequest(f"Fetching the image failed: the server answered HTTP {response.status}.")
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                raise TooLarge(f"The image at the URL is over the {policy.max_bytes} byte limit.")
            body = bytearray()
            try:
                # read1: whatever has arrived, so a site trickling a byte at a time
                # meets the deadline below (stream() would wait for 64 KB per chunk).
                while chunk := response.read1(64 * 1024):
                    body += chunk
                    if len(body) > policy.max_bytes:
                        raise TooLarge(f"The image at the URL is over the {policy.max_bytes} byte limit.")
                    if time.monotonic() > deadline:
                        raise BadRequest("Fetching the image took too long.")
            except urllib3.exceptions.HTTPError as exc:
                raise BadRequest(f"The image could not be fetched: {type(exc).__name__}.") from None
            return bytes(body)
        finally:
            response.release_conn()
            pool.close()
    raise BadRequest(f"Too many redirects (more than {MAX_REDIRECTS}).")
