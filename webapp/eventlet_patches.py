"""A fix for eventlet's websocket server, applied when serving in eventlet mode.

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


def install() -> None:
    from eventlet import websocket

    websocket.RFC6455WebSocket._apply_mask = staticmethod(apply_mask)
