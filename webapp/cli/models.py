"""`webapp models --store URL`: list what a model store holds (no download)."""

from __future__ import annotations

import json


def register(sub) -> None:
    parser = sub.add_parser("models", help="list the models in a store")
    parser.add_argument("--store", help="s3://bucket/prefix or a directory (default: $MODEL_STORE)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(run=run)


def run(args) -> int:
    import sys

    from ..config import load_config
    from ..models.store import StoreUnavailable, open_store

    settings = load_config()
    store = open_store(args.store or settings["MODEL_STORE"], None, settings)
    try:
        models = store.list_models()
    except StoreUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for model in models:
        row = {"name": model.name, "version": model.version, "layout": model.layout,
               "size": model.size, "file": model.model_key}
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{model.name:32} {model.version:14} {model.layout:10} {model.size / 1e6:8.2f} MB  {model.model_key}")
    if not models and not args.json:
        print("(no models)")
    return 0
