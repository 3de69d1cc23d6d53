"""`webapp stream --server URL --model NAME [--fps N] PATH`: stream frames.

PATH is a directory of images (sent in name order, as they are) or a video
file imageio can read (frames JPEG-encoded). Pacing is `webapp_client`'s
stream: the next frame leaves when the previous one is answered, no faster
than `--fps` nor than the server's hint.
Prints one JSON line per answer, a progress bar on stderr, and a final
summary line: frames, fps, latency p50/p95/p99, superseded, errors.
"""

from __future__ import annotations

import io
import json
import sys
import time
from collections import Counter, deque
from pathlib import Path

from .client import add_connection_arguments, client_package, connect

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
LATENCY_WINDOW = 100_000


def register(sub) -> None:
    parser = sub.add_parser("stream", help="stream a directory of images or a video to a running server")
    add_connection_arguments(parser)
    parser.add_argument("--fps", type=float, default=30.0, help="most frames per second (default: %(default)s)")
    parser.add_argument("path", type=Path, metavar="PATH")
    parser.set_defaults(run=run)


def frames_from(path: Path):
    """(count or None, iterator of encoded frames) for a directory or a video."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return len(files), (p.read_bytes() for p in files)
    import imageio.v3 as iio
    from PIL import Image

    def encode(frame) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(frame).convert("RGB").save(buffer, "JPEG", quality=90)
        return buffer.getvalue()

    try:
        count = iio.improps(path).shape[0] if iio.improps(path).n_images else None
    except Exception:
        count = None
    return count, (encode(frame) for frame in iio.imiter(path))


def percentile(values, q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 2)


def run(args) -> int:
    from tqdm import tqdm

    PredictionError = client_package().PredictionError
    if args.fps <= 0:
        print("error: --fps must be positive", file=sys.stderr)
        return 2
    try:
        total, frames = frames_from(args.path)
    except Exception as exc:
        print(f"error: cannot read frames from {args.path}: {exc}", file=sys.stderr)
        return 2
    # Percentiles over the last LATENCY_WINDOW answers: bounded on endless streams.
    latencies, codes = deque(maxlen=LATENCY_WINDOW), Counter()
    answered, started = 0, time.perf_counter()
    with connect(args) as client, tqdm(total=total, unit="frame", file=sys.stderr, disable=None) as bar:
        stream = client.stream(frames, model=args.model, fps=args.fps, top_k=args.top_k)
        for answer in stream:
            if isinstance(answer, PredictionError):
                codes[answer.code] += 1
                answer = answer.to_dict()
            else:
                answered += 1
                latencies.append(stream.last_round_trip_ms)
            print(json.dumps(answer), flush=True)
            bar.update(1)
    elapsed = time.perf_counter() - started
    summary = {
        "frames": answered + sum(codes.values()), "answered": answered,
        "fps": round(answered / elapsed, 2) if elapsed else None,
        "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "p99": percentile(latencies, 99)},
        "superseded": codes.get("superseded", 0),
        "errors": sum(codes.values()) - codes.get("superseded", 0),
    }
    print(json.dumps({"summary": summary}), flush=True)
    return 1 if summary["errors"] else 0
