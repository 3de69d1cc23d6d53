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
#: Beside a version's conversion: why it could not be converted (not tried again).
FAILED_CONVERSION = "model.tflite.failed"


def _write_quietly(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:  # a full disk only costs a second attempt next time
        log.warning("could not record %s: %s", path, exc)


def convert_in_subprocess(model_path: Path, out_path: Path, preprocess: str) -> dict:
    """Run the converter in its own process, so this one never imports TensorFlow."""
    command = [sys.executable, "-m", "webapp.models.runtime.convert", str(model_path), str(out_path),
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
    int8 = _int8_runtime(files, settings) if settings.get("SERVE_INT8", True) else None
    if int8 is not None:
        return int8
    tflite = files.converted_path
    if tflite is None and converted_dir is not None and (converted_dir / "model.tflite").is_file():
        tflite = converted_dir / "model.tflite"
    reason = None
    if tflite is None and converted_dir is not None:
        target = converted_dir / "model.tflite"
        failed = converted_dir / FAILED_CONVERSION
        if failed.is_file():  # this very version failed to convert before: once is enough
            reason = failed.read_text(errors="replace")[:500] or "conversion failed"
        else:
            converted_dir.mkdir(parents=True, exist_ok=True)
            log.info("converting model %s to LiteRT", name)
            report = convert_in_subprocess(files.model_path, target, files.metadata.preprocess)
            if report.get("ok"):
                log.info("model %s converted to LiteRT (max abs diff %.2g on the probe batch)",
                         name, report["max_abs_diff"])
                tflite = target
            else:
                reason = report.get("reason", "conversion failed")
                _write_quietly(failed, reason)
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


def _int8_runtime(files, settings: dict):
    """The model's full-integer LiteRT file, if it was published with one and it loads."""
    from ..store.base import INT8_FILE

    if INT8_FILE not in files.stored.metadata_keys:
        return None
    path = files.model_path.parent / INT8_FILE  # beside the model, in the store or the cache
    if not path.is_file():
        return None
    from .litert_runtime import LiteRTRuntime

    try:
        runtime = LiteRTRuntime(path, threads=int(settings.get("LITERT_THREADS", 2)),
                                interpreters=int(settings.get("LITERT_INTERPRETERS", 2)))
    except RuntimeLoadError as exc:
        log.warning("model %s: the int8 file does not load, serving the float one: %s", files.stored.name, exc)
        return None
    runtime.name = "litert-int8"
    runtime.int8 = dict(files.metadata.int8 or {})
    return runtime


__all__ = ["RUNTIMES", "Runtime", "RuntimeLoadError", "convert_in_subprocess", "load_runtime"]
