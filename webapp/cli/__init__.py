"""Command line: `python -m webapp COMMAND` (also the `webapp` console script).

Each command lives in its own module and registers its sub-parser here;
commands import their heavy dependencies only when they run.
"""

from __future__ import annotations

import argparse
import sys

from . import bench, models, notify, predict, publish, serve, stream

COMMANDS = (serve, predict, stream, publish, models, notify, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="webapp", description="Realtime prediction server.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, RuntimeError) as exc:
        # Imported here, not above: `serve` must patch eventlet before the
        # settings library pulls in ssl and socket.
        from ..config import SettingsError
        from ..server.library_internals import InternalsChanged

        if not isinstance(exc, (SettingsError, InternalsChanged)):
            raise
        # A bad variable, or a library upgrade that moved an internal: say which, no traceback.
        print(f"webapp: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
