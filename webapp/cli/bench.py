"""`webapp bench`: measure the server against its raw limit and the naive design."""

from __future__ import annotations


def register(sub) -> None:
    parser = sub.add_parser("bench", help="benchmark the server (see webapp/bench)")
    parser.add_argument("--quick", action="store_true", help="smoke run, under 2 minutes")
    parser.add_argument("--modes", default="eventlet,threading", help="async modes to measure")
    parser.add_argument("--clients", default="1,4,8,16", help="concurrent clients per point")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement point")
    parser.add_argument("--out", default="bench-report.json", help="where to write the JSON report")
    parser.add_argument("--cpu-only", action="store_true",
                        help="only the server's cost per frame (server CPU, model CPU, overhead; see webapp/bench/cpu.py)")
    parser.add_argument("--models", help="only these models (comma-separated: shapes, mobilenetv2, mobilenetv2-int8)")
    parser.add_argument("--compare", metavar="DIR",
                        help="also measure the server's cost per frame with the code of another checkout (before/after)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="cost-per-frame measurements per server, alternating; the median is reported")
    parser.add_argument("--int8", action="store_true", help="also build MobileNetV2 int8 and measure it beside float")
    parser.add_argument("--soak", type=float, metavar="SECONDS",
                        help="instead: steady load at 80%% of capacity for SECONDS (first of --modes)")
    parser.add_argument("--hostile", type=float, metavar="SECONDS",
                        help="instead: normal clients beside hostile ones for SECONDS, per mode in --modes")
    parser.add_argument("--swaps", type=int, metavar="N",
                        help="instead: stream while N new versions are published; threads and RSS before/after")
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.swaps:
        from ..bench.swaps import run as run_swaps

        return run_swaps(args)
    if args.hostile:
        from ..bench.hostile import run as run_hostile

        return run_hostile(args)
    if args.soak:
        from ..bench.soak import run as run_soak

        return run_soak(args)
    from ..bench.run import run as run_bench

    return run_bench(args)
