"""Fixes for eventlet's servers, applied when serving in eventlet mode.

Chunked request bodies: eventlet's WSGI server de-chunks the body but does not
set `wsgi.input_terminated`, so Werkzeug (which must then trust the stream to
end) reads a chunked upload as empty. `terminate_chunked_input` sets it, as
gunicorn does; Werkzeug's MAX_CONTENT_LENGTH still bounds what is read.

Websocket unmasking:
eventlet (in maintenance mode upstream) unmasks every incoming websocket
frame one byte at a time in a Python generator: about 20 ms of CPU for a
100 KB JPEG frame, on the event loop, for every frame. That alone capped a
640x480 stream at ~50 frames/s per process. `apply_mask` does the same XOR
on whole integers (the technique wsproto uses), about 100x faster, with the
same results (tests/test_eventlet_patches.py compares them).
"""

from __future__ import annotations


def apply_mask(data, mask, length=None, offset=0) -> bytes:
    """XOR `data[:length]` with the 4-byte `mask`, starting `offset` bytes into it."""
    if length is None:
        length = len(data)
    chunk = bytes(data[:length])
    if not chunk:
        return b""
    key = bytes(mask[(offset + i) % 4] for i in range(4))
    keystream = (key * (len(chunk) // 4 + 1))[: len(chunk)]
    value = int.from_bytes(chunk, "little") ^ int.from_bytes(keystream, "little")
    return value.to_bytes(len(chunk), "little")


def terminate_chunked_input(wsgi_app):
    """WSGI middleware: mark chunked bodies as terminated by the server."""

    def app(environ, start_response):
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            environ["wsgi.input_terminated"] = True
        return wsgi_app(environ, start_response)

    return app


def install() -> None:
    from eventlet import websocket

    websocket.RFC6455WebSocket._apply_mask = staticmethod(apply_mask)
