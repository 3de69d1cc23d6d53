"""The official JavaScript client (socket.io-client under Node.js) gets labels."""

from __future__ import annotations

import json
import subprocess

from images import encode, shape_image
from serverproc import ROOT

EXAMPLE = ROOT / "examples" / "node"


def test_node_socketio_client_gets_labels(server, tmp_path):
    assert (EXAMPLE / "node_modules" / "socket.io-client").is_dir(), "run `make test` (it runs npm ci)"
    files = []
    for label in ("circle", "square"):
        path = tmp_path / f"{label}.jpg"
        path.write_bytes(encode(shape_image(label, seed=21)))
        files.append(str(path))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    done = subprocess.run(["node", "predict.mjs", "--server", server.url, "--model", "shapes", *files, str(bad)],
                          cwd=EXAMPLE, capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 1, done.stderr  # one file was bad
    assert [line["file"] for line in lines] == [*files, str(bad)]
    for line in lines[:2]:
        assert line["model"] == "shapes" and line["labels"][0]["score"] >= line["labels"][-1]["score"]
    assert lines[2]["code"] == "bad_image"
