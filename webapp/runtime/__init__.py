"""Model runtimes: engines that run a loaded model on a batch of inputs.

`RUNTIME` chooses: `litert` (converted models only), `tensorflow` (Keras in a
graph function), or `auto` (the default): LiteRT whenever a faithful
conversion exists or can be made, TensorFlow otherwise, with the reason
logged and reported by `GET /api/models/<name>`.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from .base import Runtime, RuntimeLoadError

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "litert", "tensorflow")
#: Seconds a conversion may take (TensorFlow import included).
CONVERT_TIMEOUT = 600


def convert_in_subprocess(model_path: Path, out_path: Path, preprocess: str) -> dict:
    """Run the converter in its own process, so this one never imports TensorFlow."""
    command = [sys.executable, "-m", "webapp.runtime.convert", str(model_path), str(out_path),
               "--preprocess", preprocess]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CONVERT_TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "reason": f"conversion took more than {CONVERT_TIMEOUT}s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"ok": False, "reason": f"the converter failed: {tail[:300]}"}


def load_runtime(files, settings: dict, converted_dir: Path | None = None) -> Runtime:
    """Load a fetched model (`LocalModelFiles`) with the runtime `RUNTIME` asks for."""
    mode = settings.get("RUNTIME", "auto")
    if mode == "tensorflow":
        from .keras_runtime import KerasRuntime

        return KerasRuntime(files.model_path)

    name = files.stored.name
    tflite = files.converted_path
    if tflite is None and converted_dir is not None and (converted_dir / "model.tflite").is_file():
        tflite = converted_dir / "model.tflite"
    reason = None
    if tflite is None and converted_dir is not None:
        target = converted_dir / "model.tflite"
        report = convert_in_subprocess(files.model_path, target, files.metadata.preprocess)
        if report.get("ok"):
            log.info("model %s converted to LiteRT (max abs diff %.2g on the probe batch)",
                     name, report["max_abs_diff"])
            tflite = target
        else:
            reason = report.get("reason", "conversion failed")
    if tflite is not None:
        from .litert_runtime import LiteRTRuntime

        try:
            return LiteRTRuntime(tflite, threads=int(settings.get("LITERT_THREADS", 2)),
                                 interpreters=int(settings.get("LITERT_INTERPRETERS", 2)))
        except RuntimeLoadError as exc:
            reason = str(exc)
    if mode == "litert":
        raise RuntimeLoadError(f"LiteRT cannot serve this model: {reason}")
    log.warning("model %s: serving with TensorFlow instead of LiteRT: %s", name, reason)
    from .keras_runtime import KerasRuntime

    runtime = KerasRuntime(files.model_path)
    runtime.fallback_reason = reason
    return runtime


__all__ = ["RUNTIMES", "Runtime", "RuntimeLoadError", "convert_in_subprocess", "load_runtime"]
