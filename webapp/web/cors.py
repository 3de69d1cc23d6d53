"""Which browser origins may connect: the server's own, always, plus CORS_ORIGINS.

Engine.IO accepts either its built-in same-origin check (no list) or a list
that replaces it, so listing one front end used to lock out the server's own
pages and the Python clients (websocket-client sends the server's own origin).
`OriginPolicy` is the callable Engine.IO accepts instead
(`cors_allowed_origins(origin, environ)`): the listed origins *and* the origin
of the request itself, computed as Engine.IO's own check does, X-Forwarded-Proto
and X-Forwarded-Host included (so a server behind a TLS proxy keeps accepting
its public origin, as it did before). Requests without an Origin header
(scripts, curl) are never refused; Engine.IO does not even ask then.
"""

from __future__ import annotations

from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_origin(origin: str) -> str:
    """`scheme://host[:port]` lower-cased, without a default port or trailing slash.

    Browsers send `https://a.example`; a setting or a Host header may say
    `https://a.example:443/`. Anything unparsable is returned lower-cased, so it
    can still match itself exactly and nothing else.
    """
    text = origin.strip().rstrip("/").lower()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return text
    if not parts.scheme or not parts.hostname:
        return text
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is None or port == DEFAULT_PORTS.get(parts.scheme):
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def own_origins(environ: dict) -> set[str]:
    """The origins this request was addressed to: its Host, and the proxy's forwarded one."""
    origins = set()
    host = environ.get("HTTP_HOST")
    scheme = environ.get("wsgi.url_scheme", "http")
    if host:
        origins.add(normalise_origin(f"{scheme}://{host}"))
    if host and ("HTTP_X_FORWARDED_PROTO" in environ or "HTTP_X_FORWARDED_HOST" in environ):
        forwarded_scheme = environ.get("HTTP_X_FORWARDED_PROTO", scheme).split(",")[0].strip()
        forwarded_host = environ.get("HTTP_X_FORWARDED_HOST", host).split(",")[0].strip()
        origins.add(normalise_origin(f"{forwarded_scheme}://{forwarded_host}"))
    return origins


class OriginPolicy:
    """`policy(origin, environ)`: may a page of `origin` use this server?"""

    def __init__(self, listed: list[str]):
        self.any = "*" in listed
        #: The CORS_ORIGINS entries, normalised, for Engine.IO and flask-cors alike.
        self.listed = sorted({normalise_origin(origin) for origin in listed if origin != "*"})

    def __call__(self, origin: str | None, environ: dict | None = None) -> bool:
        if origin is None or self.any:
            return True
        normalised = normalise_origin(origin)
        return normalised in self.listed or (environ is not None and normalised in own_origins(environ))
