"""`webapp bench`: measure the server against its raw limit and the naive design."""

from __future__ import annotations


def register(sub) -> None:
    parser = sub.add_parser("bench", help="benchmark the server (see webapp/bench)")
    parser.add_argument("--quick", action="store_true", help="smoke run, under 2 minutes")
    parser.add_argument("--modes", default="eventlet,threading", help="async modes to measure")
    parser.add_argument("--clients", default="1,4,8,16", help="concurrent clients per point")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement point")
    parser.add_argument("--out", default="bench-report.json", help="where to write the JSON report")
    parser.add_argument("--soak", type=float, metavar="SECONDS",
                        help="instead: steady load at 80%% of capacity for SECONDS (first of --modes)")
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.soak:
        from ..bench.soak import run as run_soak

        return run_soak(args)
    from ..bench.run import run as run_bench

    return run_bench(args)
