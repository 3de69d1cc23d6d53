"""LiteRT's `CompiledModel` against the `Interpreter`, on this CPU (issue 13, item 5).

`python -m webapp.bench.compiled TFLITE [TFLITE ...] [--batches 1,8] [--threads 1] [--seconds 2] [--rounds 3]`

For each model file and batch size, both APIs run the same input on one
thread, each in a subprocess of its own (so neither inherits the other's
arenas or thread pools), alternating `--rounds` times; the median per API is
printed as one JSON line per (model, batch):

* `ms_per_frame`: wall time per frame of back-to-back calls;
* `cpu_ms_per_frame`: the process's CPU time per frame (what the server pays);
* `releases_gil`: whether a Python thread kept running during the call (the
  server needs that: a call that holds the GIL stalls every client).

The Interpreter call is what the server does (`set_tensor`, `invoke`,
`get_tensor`); the CompiledModel call writes the input into its TensorBuffer,
runs, and reads the output back, which is the least a server call can do.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

APIS = ("interpreter", "compiled")


class _InterpreterCall:
    def __init__(self, tflite: Path, batch: int, threads: int):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(tflite), num_threads=threads)
        detail = self.interpreter.get_input_details()[0]
        self.input_index = detail["index"]
        self.interpreter.resize_tensor_input(self.input_index, (batch, *detail["shape_signature"][1:]), strict=False)
        self.interpreter.allocate_tensors()
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self.shape = tuple(self.interpreter.get_input_details()[0]["shape"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index)


class _CompiledCall:
    def __init__(self, tflite: Path, batch: int, threads: int):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import CpuOptions, Options

        options = Options(hardware_accelerators=HardwareAccelerator.CPU, cpu_options=CpuOptions(num_threads=threads))
        self.model = CompiledModel.from_file(str(tflite), options=options)
        details = self.model.get_input_tensor_details(self._signature())
        name, detail = next(iter(details.items()))
        shape = [int(d) for d in detail["shape"]]
        if shape[0] != batch:
            self.model.resize_input_tensor(0, (batch, *shape[1:]), strict=False)
        self.shape = (batch, *shape[1:])
        self.inputs = self.model.create_input_buffers(0)
        self.outputs = self.model.create_output_buffers(0)
        out_detail = next(iter(self.model.get_output_tensor_details(self._signature()).values()))
        self.out_shape = (batch, *[int(d) for d in out_detail["shape"]][1:])
        self.out_elements = int(np.prod(self.out_shape))

    def _signature(self) -> str:
        return next(iter(self.model.get_signature_list()))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.inputs[0].write(x)
        self.model.run_by_index(0, self.inputs, self.outputs)
        return self.outputs[0].read(self.out_elements, np.float32).reshape(self.out_shape)


def _measure(api: str, tflite: Path, batch: int, threads: int, seconds: float) -> dict:
    call = (_InterpreterCall if api == "interpreter" else _CompiledCall)(tflite, batch, threads)
    x = np.random.default_rng(0).uniform(-1, 1, call.shape).astype(np.float32)
    first = call(x).copy()
    for _ in range(5):
        call(x)
    frames, cpu_started, wall_started = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - wall_started < seconds:
        call(x)
        frames += batch
    cpu, wall = time.process_time() - cpu_started, time.perf_counter() - wall_started
    # Does a Python thread run while the model does? Count its loop turns
    # during a second of calls, against a second of plain sleeping.
    turns, stop = [0], [False]

    def spin() -> None:
        while not stop[0]:
            turns[0] += 1

    counter = threading.Thread(target=spin)
    counter.start()
    ended = time.perf_counter() + 0.5
    calls = 0
    while time.perf_counter() < ended:
        call(x)
        calls += 1
    stop[0] = True
    counter.join()
    return {"api": api, "batch": batch, "threads": threads,
            "ms_per_frame": round(wall * 1000.0 / frames, 4), "cpu_ms_per_frame": round(cpu * 1000.0 / frames, 4),
            "spin_turns_per_call": turns[0] // max(1, calls), "checksum": float(np.round(first.sum(), 3))}


def compare(tflite: Path, batch: int, threads: int, seconds: float, rounds: int) -> dict:
    runs: dict[str, list[dict]] = {api: [] for api in APIS}
    for _ in range(rounds):
        for api in APIS:
            done = subprocess.run([sys.executable, "-m", "webapp.bench.compiled", "--one", api, str(tflite),
                                   "--batches", str(batch), "--threads", str(threads), "--seconds", str(seconds)],
                                  capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                runs[api].append({"error": done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else "?"})
                continue
            runs[api].append(json.loads(done.stdout.strip().splitlines()[-1]))
    row = {"model": tflite.parent.name + "/" + tflite.name, "batch": batch, "threads": threads}
    for api, measured in runs.items():
        good = [m for m in measured if "error" not in m]
        if not good:
            row[api] = {"error": measured[0]["error"]}
            continue
        row[api] = {"ms_per_frame": statistics.median(m["ms_per_frame"] for m in good),
                    "cpu_ms_per_frame": statistics.median(m["cpu_ms_per_frame"] for m in good),
                    "all_ms_per_frame": [m["ms_per_frame"] for m in good],
                    "spin_turns_per_call": statistics.median(m["spin_turns_per_call"] for m in good),
                    "checksum": good[0]["checksum"]}
    if "ms_per_frame" in row["interpreter"] and "ms_per_frame" in row["compiled"]:
        row["compiled_vs_interpreter"] = round(row["compiled"]["ms_per_frame"] / row["interpreter"]["ms_per_frame"], 3)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tflite", type=Path, nargs="+")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one", choices=APIS, help=argparse.SUPPRESS)  # the measuring subprocess
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.one:
        print(json.dumps(_measure(args.one, args.tflite[0], batches[0], args.threads, args.seconds)))
        return 0
    for tflite in args.tflite:
        for batch in batches:
            print(json.dumps(compare(tflite, batch, args.threads, args.seconds, args.rounds)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
