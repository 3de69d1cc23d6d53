"""Shared bits of the command-line clients (`predict`, `stream`), built on `webapp_client`.

Nothing network-related is imported at module level: `python -m webapp
serve` imports every command module, and eventlet must monkey-patch before
`ssl` or `socket` are first imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: The client package's source in this checkout (clients/python/src).
CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "clients" / "python" / "src"


def add_connection_arguments(parser) -> None:
    parser.add_argument("--server", default="http://127.0.0.1:5000", help="server URL (default: %(default)s)")
    parser.add_argument("--model", default="shapes", help="model name (default: %(default)s)")
    parser.add_argument("--token", help="access token, sent as Socket.IO auth {'token': ...}")
    parser.add_argument("--top-k", type=int, default=5, help="labels per answer (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an answer")


def client_package():
    """The `webapp_client` module.

    `make run` installs it; a checkout used without that step (the Docker
    image, a conda environment with `pip install -e .`) has it beside the
    server, so that copy is used rather than failing.
    """
    try:
        import webapp_client
    except ImportError:
        sys.path.append(str(CLIENT_SOURCE))
        import webapp_client
    return webapp_client


def connect(args):
    """A connected `webapp_client.Client`, or exit 2 with the reason."""
    webapp_client = client_package()
    try:
        return webapp_client.Client(args.server, token=args.token, timeout=args.timeout)
    except webapp_client.ConnectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
