"""Shared bits of the command-line Socket.IO clients (`predict`, `stream`).

Nothing network-related is imported at module level: `python -m webapp
serve` imports every command module, and eventlet must monkey-patch before
`ssl` or `socket` are first imported.
"""

from __future__ import annotations

import sys


def add_connection_arguments(parser) -> None:
    parser.add_argument("--server", default="http://127.0.0.1:5000", help="server URL (default: %(default)s)")
    parser.add_argument("--model", default="shapes", help="model name (default: %(default)s)")
    parser.add_argument("--token", help="access token, sent as Socket.IO auth {'token': ...}")
    parser.add_argument("--top-k", type=int, default=5, help="labels per answer (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an answer")


def connect(args):
    """A connected `socketio.Client` (websocket, falling back to polling), or exit clearly."""
    import socketio

    client = socketio.Client(reconnection=False)
    refusals = []  # the server's reason, e.g. "unauthorized"
    client.on("connect_error", refusals.append)
    try:
        client.connect(args.server, transports=["websocket", "polling"],
                       auth={"token": args.token} if args.token else None, wait_timeout=15)
    except socketio.exceptions.ConnectionError as exc:
        reason = refusals[0].get("message") if refusals and isinstance(refusals[0], dict) else exc
        print(f"error: cannot connect to {args.server}: {reason}", file=sys.stderr)
        raise SystemExit(2) from None
    return client
