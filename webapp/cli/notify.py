"""`webapp notify --queue redis://... --model NAME`: make every server revalidate a model now."""

from __future__ import annotations

import json
import os
import sys


def register(sub) -> None:
    parser = sub.add_parser("notify", help="tell every server process to check a model for a new version")
    parser.add_argument("--queue", default=os.environ.get("MESSAGE_QUEUE"),
                        help="the servers' message queue (default: $MESSAGE_QUEUE)")
    parser.add_argument("--model", required=True)
    parser.set_defaults(run=run)


def run(args) -> int:
    from ..server.messaging import notify_revalidate

    if not args.queue:
        print("error: give --queue redis://... (or set MESSAGE_QUEUE)", file=sys.stderr)
        return 2
    try:
        listeners = notify_revalidate(args.queue, args.model)
    except Exception as exc:
        print(f"error: cannot reach the message queue: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"model": args.model, "processes_notified": listeners}))
    return 0
