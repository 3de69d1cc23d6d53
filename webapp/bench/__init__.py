"""`python -m webapp bench`: how fast the server is, against its limits.

In one run on one machine it measures, for each model and async mode:

0. the server's own cost per frame (`cpu.py`): server CPU per answered frame
   from /proc, the model's own CPU, the overhead between them and a
   reference task timed in the same run (`--cpu-only` runs just this;
   `--compare DIR` measures another checkout's server beside this one;
   `--int8` adds MobileNetV2 int8); `profile.py` records the server with
   py-spy under the same load;
1. the raw limit: LiteRT's own throughput in-process at its best batch size,
   thread and interpreter count;
2. the server: N concurrent Socket.IO clients (closed loop) with 224x224 and
   640x480 JPEG frames: frames/s, round-trip p50/p95/p99, superseded, RSS;
3. the naive design under the same load (`naive_server`);
4. overload: clients sending at twice the measured capacity;
5. memory with three MobileNetV2-size models loaded, and the cold start of an
   uncached model from S3 (moto on loopback) against download + load time.

It prints a table with the ratios server/limit and server/naive and writes a
JSON report. `--quick` is a smoke run (demo model only, short phases).
`--soak SECONDS` runs a steady load at 80% of capacity instead (`soak.py`).
Timings on a shared 2-core machine are noisy: compare ratios within one run.
"""
