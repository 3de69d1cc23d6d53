"""Library internals the server relies on: one module per library, one check.

Where a library offers no public hook for what a bound or a fix needs, the
server touches its internals, each time in exactly one module:

* `eventlet_internals`: eventlet's websocket (fast unmasking, message bound,
  closing both directions) and chunked request bodies (eventlet mode);
* `simple_websocket_internals`: simple-websocket's reader (message bound,
  threading mode);
* `engineio_internals`: Engine.IO sessions (pings end at close, sessions
  closed without waiting, the session table);
* `socketio_internals`: python-socketio's CONNECT and event dispatch (was a
  CONNECT refused, was an ack requested).

`check(async_mode)` runs every check that mode needs when the app is built,
before anything is served: if an upgrade moved an internal, the server stops
at start-up naming it (`InternalsChanged`), instead of losing a bound or an
ack silently at run time. pyproject.toml bounds these libraries' versions.
"""

from __future__ import annotations


class InternalsChanged(RuntimeError):
    """A library no longer has an internal the server relies on."""


def require(library: str, missing: list[str], module: str) -> None:
    """Raise `InternalsChanged` naming what `library` lacks, if anything."""
    if missing:
        raise InternalsChanged(f"{library} lacks what webapp.server.{module} relies on: {', '.join(missing)}. "
                               "Install the versions pinned in requirements/base.txt (pyproject.toml bounds them).")


def source_of(function) -> str:
    """The source of a library function, or "" when it has none to show
    (replaced by a builtin, or defined where no file backs it)."""
    import inspect

    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def check(async_mode: str) -> None:
    """Check every internal the server touches in `async_mode`; raise `InternalsChanged`."""
    from . import engineio_internals, socketio_internals

    socketio_internals.check()
    engineio_internals.check()
    if async_mode == "eventlet":
        from . import eventlet_internals

        eventlet_internals.check()
    else:
        from . import simple_websocket_internals

        simple_websocket_internals.check()
