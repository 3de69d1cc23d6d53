"""`webapp predict --server URL --model NAME FILE...`: label image files.

Prints one JSON line per file: the server's `label` object (or its `error`
object) with the file name added. Exits 1 if any file got an error.
"""

from __future__ import annotations

import json
from pathlib import Path

from .client import add_connection_arguments, connect


def register(sub) -> None:
    parser = sub.add_parser("predict", help="label image files with a running server")
    add_connection_arguments(parser)
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.set_defaults(run=run)


def run(args) -> int:
    client = connect(args)
    failed = False
    try:
        for index, path in enumerate(args.files):
            try:
                image = path.read_bytes()
            except OSError as exc:
                answer = {"id": index, "code": "unreadable", "message": f"cannot read {path}: {exc.strerror}"}
            else:
                answer = client.call("frame", {"model": args.model, "image": image, "id": index,
                                               "top_k": args.top_k}, timeout=args.timeout)
            failed = failed or "code" in answer
            print(json.dumps({"file": str(path), **answer}), flush=True)
    finally:
        client.disconnect()
    return 1 if failed else 0
