"""Realtime prediction server: image frames in over Socket.IO, labels out.

`create_app()` builds the Flask app and wires the layers explicitly:
settings -> model store -> registry -> data plane -> transports (Socket.IO
events, HTTP API, pages). Importing this package is cheap: no model and no
TensorFlow are loaded until a model is first needed.

The package imports nothing heavy at import time (not even Flask), so that
`python -m webapp serve` can monkey-patch for eventlet before Flask, Socket.IO
or anything else opens a socket.
"""

from __future__ import annotations

__version__ = "0.1.0"


def create_app(config: dict | None = None):
    """Build the Flask app; see `webapp.app.create_app`."""
    from .app import create_app as _create_app

    return _create_app(config)


def __getattr__(name: str):
    # `from webapp import socketio` without importing Flask at package import.
    if name == "socketio":
        from .extensions import socketio

        return socketio
    raise AttributeError(f"module 'webapp' has no attribute {name!r}")
