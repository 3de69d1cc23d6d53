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
on 32-bit words with numpy (on whole integers, the technique wsproto uses,
for short frames), several hundred times faster, with the same results
(tests/server/test_websocket_internals.py compares them).

Websocket message size: eventlet checks `max_frame_length` (Engine.IO passes
its `max_http_buffer_size`) against each frame's header only, and its
`Message` keeps every fragment of a message until the final one: a first
frame with FIN=0 followed by endless continuation frames grew without bound.
`BoundedMessage` counts the bytes pushed into a message and fails the
connection with 1009 (message too big) as soon as they pass the limit, so a
connection never holds more than about one limit of message. Legacy
(hixie-75/76, pre-2011) websockets buffer until a 0xFF byte with no bound at
all and no browser speaks them any more, so they are refused.

Closing: `RFC6455WebSocket.close` shuts down only the sending side, and its
`socket.close()` leaves the descriptor open while eventlet's WSGI server still
holds the connection, so Engine.IO's reader stayed blocked in `recv()` until
the client spoke or the socket timeout (ping interval + timeout) passed: a
refused client that kept quiet held a descriptor and a green thread that long.
`close` here also shuts down the receiving side, which ends that read at once.

Reading ahead: eventlet reads each websocket frame with three or four
`recv` calls (2 header bytes, the extended length, the 4-byte mask, the
payload), each a system call and, when the bytes are not there yet, a trip
through the hub. A frame event is two websocket messages (its JSON and its
binary attachment), so about seven reads per frame. `ReadAhead` wraps the
connection's socket so that a small read (a header, a length, a mask) takes
up to `READ_AHEAD` bytes that have already arrived, and the next reads are
served from them: a frame's JSON message, the attachment's header and the
start of its payload come in one `recv`, the rest of the payload in a second.
Larger reads go to the socket as before. It holds at most 4 KB per
connection, bytes the kernel was holding anyway (64 KB saved no more calls
for a webcam frame and churned more of the heap).

Memory a refused message leaves: what eventlet reads for a message goes
through blocks of every size up to the frame's (its `_get_bytes` appends
each `recv` to a copy of all read so far), below the 1 MB mmap threshold
(`memory.py`), so from the heap, whose holes then kept pages resident: 15
connections cut off for over-long messages (1 MB frames) left 12-18 MB
behind, once 20 MB (tests/server/test_network_bounds.py, bound 17.3 MB),
against under 1 MB in threading mode. `BoundedMessage` drops what the
message kept as soon as it is refused and hands the free pages back
(`malloc_trim`): the same 15 then leave RSS 2-3 MB below where it was.
Reading in linear time instead changed nothing measurable, so eventlet's
`_get_bytes` is left as it is.

Every internal touched here is checked by `check()` (at start-up) and `install()`, which fails loudly
when an eventlet upgrade moved it (pyproject.toml bounds the version too).
"""

from __future__ import annotations

from .memory import return_freed_memory


#: From this many bytes on, `apply_mask` XORs with numpy: 5 against 34 us for a
#: 15 KB webcam frame. Below it numpy's call costs more than Python's integers.
NUMPY_MASK_BYTES = 256


def apply_mask(data, mask, length=None, offset=0) -> bytes:
    """XOR `data[:length]` with the 4-byte `mask`, starting `offset` bytes into it."""
    if length is None:
        length = len(data)
    key = bytes(mask[(offset + i) % 4] for i in range(4))
    if length >= NUMPY_MASK_BYTES:
        import numpy as np

        out = bytearray(data[:length])
        words = np.frombuffer(out, np.uint32, len(out) // 4)
        np.bitwise_xor(words, np.frombuffer(key, np.uint32)[0], out=words)
        for i in range(len(words) * 4, len(out)):  # the last 0-3 bytes
            out[i] ^= key[i % 4]
        return bytes(out)
    chunk = bytes(data[:length])
    if not chunk:
        return b""
    keystream = (key * (len(chunk) // 4 + 1))[: len(chunk)]
    value = int.from_bytes(chunk, "little") ^ int.from_bytes(keystream, "little")
    return value.to_bytes(len(chunk), "little")


#: The most one websocket read takes from the kernel (see "Reading ahead").
READ_AHEAD = 4 * 1024


class ReadAhead:
    """A socket whose `recv(n)` may read up to `READ_AHEAD` bytes and hand out
    the rest to the next calls; every other attribute is the socket's own."""

    __slots__ = ("_sock", "_ahead", "_start")

    def __init__(self, sock):
        self._sock, self._ahead, self._start = sock, b"", 0

    def recv(self, size: int) -> bytes:
        if self._start < len(self._ahead):
            piece = self._ahead[self._start:self._start + size]
            self._start += len(piece)
            return piece
        self._ahead, self._start = b"", 0
        data = self._sock.recv(max(size, READ_AHEAD))
        if len(data) <= size:
            return data
        self._ahead, self._start = data, size
        return data[:size]

    def __getattr__(self, name):
        return getattr(self._sock, name)


def _reading_ahead(init):
    """`RFC6455WebSocket.__init__`, with its socket wrapped in `ReadAhead`."""
    import functools

    @functools.wraps(init)
    def init_reading_ahead(self, sock, *args, **kwargs):
        init(self, ReadAhead(sock), *args, **kwargs)

    return init_reading_ahead


def terminate_chunked_input(wsgi_app):
    """WSGI middleware: mark chunked bodies as terminated by the server."""

    def app(environ, start_response):
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            environ["wsgi.input_terminated"] = True
        return wsgi_app(environ, start_response)

    return app


def _bounded_message_class(websocket):
    """A subclass of eventlet's per-message buffer that stops at the limit."""

    class BoundedMessage(websocket.RFC6455WebSocket.Message):
        received = 0

        def push(self, data, final=False):
            self.received += len(data)
            if self.received > self.max_frame_length:
                # What was kept is dropped now, not when the connection's
                # objects go, and its pages given back (see "Memory a refused message leaves").
                self.data = []
                return_freed_memory()
                # Raised inside `_recv_frame`; `_iter_frames` answers it by
                # sending close 1009 and closing the socket.
                raise websocket.FailedConnectionError(
                    1009, f"Message above the limit of {self.max_frame_length} bytes.")
            super().push(data, final)

    return BoundedMessage


def _closing_both_directions(close):
    """`close`, after waking any read waiting on the socket (see the module docstring)."""
    import functools

    @functools.wraps(close)
    def close_both(self, close_data=None):
        import socket

        try:
            self.socket.shutdown(socket.SHUT_RD)
        except OSError:  # already closed: nothing is waiting on it
            pass
        return close(self, close_data=close_data)

    return close_both


def _refuse_legacy_request(self, environ):
    from eventlet import websocket

    raise websocket.BadRequest()


def check(websocket=None) -> None:
    """Fail loudly if eventlet no longer has what these patches replace."""
    import inspect

    if websocket is None:
        from eventlet import websocket

    missing = []
    ws = getattr(websocket, "RFC6455WebSocket", None)
    message = getattr(ws, "Message", None)
    if ws is None or "_apply_mask" not in ws.__dict__:
        missing.append("RFC6455WebSocket._apply_mask")
    if ws is None or list(inspect.signature(ws.__init__).parameters)[:2] != ["self", "sock"]:
        missing.append("RFC6455WebSocket.__init__(sock, ...)")
    if ws is None or "close_data" not in inspect.signature(ws.close).parameters:
        missing.append("RFC6455WebSocket.close(close_data)")
    if message is None or not callable(getattr(message, "push", None)) or \
            "max_frame_length" not in inspect.signature(message.__init__).parameters or \
            not isinstance(getattr(message(1, 1), "data", None), list):
        missing.append("RFC6455WebSocket.Message(opcode, max_frame_length, ...).push")
    for name in ("FailedConnectionError", "BadRequest"):
        if not hasattr(websocket, name):
            missing.append(name)
    if not callable(getattr(getattr(websocket, "WebSocketWSGI", None), "_handle_legacy_request", None)):
        missing.append("WebSocketWSGI._handle_legacy_request")
    import eventlet

    from .library_internals import require

    require(f"eventlet {eventlet.__version__}", missing, "eventlet_internals")


def install() -> None:
    from eventlet import websocket

    if getattr(websocket.RFC6455WebSocket.Message, "_webapp_bounded", False):
        return
    check(websocket)
    websocket.RFC6455WebSocket._apply_mask = staticmethod(apply_mask)
    bounded = _bounded_message_class(websocket)
    bounded._webapp_bounded = True
    websocket.RFC6455WebSocket.Message = bounded
    websocket.RFC6455WebSocket.close = _closing_both_directions(websocket.RFC6455WebSocket.close)
    websocket.RFC6455WebSocket.__init__ = _reading_ahead(websocket.RFC6455WebSocket.__init__)
    websocket.WebSocketWSGI._handle_legacy_request = _refuse_legacy_request
