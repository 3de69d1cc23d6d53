"""`webapp predict --server URL --model NAME FILE...`: label image files.

Prints one JSON line per file: the server's `label` object (or its `error`
object) with the file name added. Exits 1 if any file got an error, 2 if the
server cannot be reached.
"""

from __future__ import annotations

import json
from pathlib import Path

from .client import add_connection_arguments, client_package, connect


def register(sub) -> None:
    parser = sub.add_parser("predict", help="label image files with a running server")
    add_connection_arguments(parser)
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.set_defaults(run=run)


def run(args) -> int:
    PredictionError = client_package().PredictionError
    failed = False
    with connect(args) as client:
        for index, path in enumerate(args.files):
            try:
                answer = client.predict(path, model=args.model, top_k=args.top_k, frame_id=index)
            except OSError as exc:
                answer = {"id": index, "code": "unreadable", "message": f"cannot read {path}: {exc.strerror}"}
            except PredictionError as exc:
                answer = exc.to_dict()
            failed = failed or "code" in answer
            print(json.dumps({"file": str(path), **answer}), flush=True)
    return 1 if failed else 0
