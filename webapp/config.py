"""Settings: read from environment variables when the app is built, validated once.

Every setting has a documented default so that `python -m webapp serve` works
on a fresh machine with no configuration at all. `load_config(overrides)`
accepts a mapping that overrides any of them, which is how tests and
embedders configure the app without touching the process environment.

Nothing is read at import time: `create_app` (and each CLI command) calls
`load_config`, so importing the package has no effect on the process.

pydantic-settings does the reading, coercion and range checks, so a value that
would misbehave (a zero limit, a refresh period of 0, unparsable JSON) stops
the server at start with a message naming the variable and what is allowed,
instead of surfacing on the first frame.

Three budgets default to a share of the container's memory limit (see
`webapp/server/memory.py` and the README's table of bounds): MODEL_MEMORY_MB,
DECODE_MEMORY_MB and MAX_CONNECTIONS. Setting one explicitly wins.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: The repository root: the bundled model store, templates and static files
#: live beside the package rather than inside it.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

ASYNC_MODES = ("eventlet", "threading")

#: Shares of the memory limit that the derived defaults take (README, "Bounds").
MODEL_MEMORY_SHARE = 0.35
DECODE_MEMORY_SHARE = 0.25
DECODE_MEMORY_CAP_MB = 1024.0
#: Memory one idle connection is budgeted (socket buffers, Engine.IO session,
#: green thread or OS thread stack); MAX_CONNECTIONS gets 10% of the limit.
CONNECTION_SHARE = 0.10
CONNECTION_COST_BYTES = 64 * 1024
MAX_CONNECTIONS_RANGE = (16, 10_000)

CommaList = Annotated[list[str], NoDecode]
PositiveInt = Annotated[int, Field(gt=0)]
#: Pillow's default `Image.MAX_IMAGE_PIXELS` (Pillow 13), the ceiling of ours.
PILLOW_BOMB_LIMIT = 89_478_485
PositiveFloat = Annotated[float, Field(gt=0)]


class SettingsError(ValueError):
    """A setting has a value the server cannot run with."""


class Settings(BaseSettings):
    """Defaults and environment overrides; field names are the variable names."""

    # Blank variables mean "the default" (a Procfile or app.json often sets
    # them empty); DEFAULT_MODEL is the exception, see load_config.
    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", validate_default=True,
                                      env_ignore_empty=True)

    # --- process ---------------------------------------------------------
    #: Concurrency model: "eventlet" (eventlet's WSGI server via socketio.run)
    #: or "threading" (simple-websocket under gunicorn's gthread worker).
    ASYNC_MODE: Literal["eventlet", "threading"] = "eventlet"
    HOST: str = "127.0.0.1"
    PORT: Annotated[int, Field(gt=0, lt=65536)] = 5000
    #: gunicorn gthread worker threads in threading mode; each open websocket
    #: holds one thread, so this bounds concurrent Socket.IO clients.
    THREADS: PositiveInt = 100
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    #: "text" or "json" (one object per line).
    LOG_FORMAT: Literal["text", "json"] = "text"
    #: Signs nothing users keep (no sessions); minted per process when unset.
    SECRET_KEY: str = ""

    #: Origins (scheme://host:port, comma separated) allowed to connect from
    #: other sites, for Socket.IO and the HTTP API, besides the server's own
    #: origin, which is always accepted (webapp/cors.py). Empty: same origin only.
    CORS_ORIGINS: CommaList = []
    #: Allow credentials (cookies, Authorization) on cross-origin requests.
    CORS_CREDENTIALS: bool = False

    #: Redis URL shared by several server processes (Socket.IO message queue
    #: and model notifications). Empty: a single process.
    MESSAGE_QUEUE: str = ""

    #: JSON: token -> models it may use (names, or prefixes ending in "*").
    PROJECT_TOKENS: str = ""
    #: The operators' token: every model, /dashboard, /metrics, monitor.
    ADMIN_TOKEN: str = ""

    # --- models ----------------------------------------------------------
    #: Where models are stored: a directory (default: the bundled `models/`)
    #: or s3://bucket/prefix.
    MODEL_STORE: str = str(PROJECT_ROOT / "models")
    #: Model used by /readyz and pre-selected by the pages.
    #: Set it empty to have no default model (readiness then follows the store).
    DEFAULT_MODEL: str = "shapes"
    #: Models loaded at start-up, comma separated (in the background).
    MODELS_PRELOAD: CommaList = []
    #: Most frames answered by one model call. Frames that arrive while the
    #: model is busy are batched into the next call, up to this many.
    MAX_BATCH: Annotated[int, Field(gt=0, le=1024)] = 32
    #: Runtime: auto (LiteRT when the conversion is faithful, else TensorFlow),
    #: litert, or tensorflow.
    RUNTIME: Literal["auto", "litert", "tensorflow"] = "auto"
    #: Threads per LiteRT interpreter, and interpreters per model: chosen by
    #: measurement (webapp/models/runtime/litert_runtime.py, README "Speed"). Interpreters
    #: beyond the first are built when a model's calls first overlap.
    LITERT_THREADS: Annotated[int, Field(gt=0, le=64)] = 2
    LITERT_INTERPRETERS: Annotated[int, Field(gt=0, le=16)] = 2
    #: Native threads that run fast models' batches (decoding and the model
    #: call) under eventlet; slower work uses eventlet's `tpool`. Empty: the
    #: CPUs this process may use, 2 to 8 (more threads than cores only wait).
    FRAME_THREADS: Annotated[int, Field(gt=0, le=64)] | None = None
    #: Serve a model's full-integer file (`model.int8.tflite`, made by
    #: `publish --quantize int8`) instead of the float one when it has one.
    SERVE_INT8: bool = True
    #: How long a frame may wait for its model to be loaded before it is
    #: answered `model_unavailable`.
    MODEL_LOAD_TIMEOUT: PositiveFloat = 120.0

    # --- remote store, cache and memory -----------------------------------
    #: Local directory for downloaded models and the warm set.
    MODEL_CACHE_DIR: str = str(Path.home() / ".cache" / "webapp" / "models")
    #: Disk bound of the cache; least recently used models are evicted first.
    MODEL_CACHE_MAX_MB: PositiveFloat = 2048.0
    #: The memory the server may use; empty: read from the container (cgroup)
    #: or the machine. The three budgets below default to shares of it.
    MEMORY_LIMIT_MB: PositiveFloat | None = None
    #: Memory bound of loaded models (measured bytes); LRU unloaded first.
    MODEL_MEMORY_MB: PositiveFloat | None = None
    #: Decoded pixels in flight, server-wide; a frame that would pass it waits
    #: briefly, then is answered `overloaded`.
    DECODE_MEMORY_MB: PositiveFloat | None = None
    #: Open connections (Socket.IO and Engine.IO sessions) server-wide.
    MAX_CONNECTIONS: PositiveInt | None = None
    #: Optional bound on the number of loaded models (0: no bound).
    MAX_LOADED_MODELS: Annotated[int, Field(ge=0)] = 0
    #: How often a model in use is checked for a new version in the store.
    MODEL_REFRESH_SECONDS: PositiveFloat = 60.0
    #: How long the store's model list is cached.
    MODEL_LIST_TTL: Annotated[float, Field(ge=0.0)] = 30.0
    #: How many recently used models are loaded again after a restart.
    WARM_SET_SIZE: Annotated[int, Field(ge=0, le=100)] = 5
    #: S3-compatible endpoint (MinIO, Ceph, ...); empty for AWS itself.
    S3_ENDPOINT_URL: str = ""
    S3_CONNECT_TIMEOUT: PositiveFloat = 3.0
    S3_READ_TIMEOUT: PositiveFloat = 10.0
    S3_MAX_ATTEMPTS: Annotated[int, Field(gt=0, le=20)] = 3

    # --- input limits ----------------------------------------------------
    #: Largest encoded image accepted (bytes, after base64 decoding).
    MAX_FRAME_BYTES: Annotated[int, Field(gt=0, le=256 * 1024 * 1024)] = 4 * 1024 * 1024
    #: Largest image accepted, checked from the header before decoding. 64 MP
    #: admits every phone camera's full-size JPEG (12-50 MP); what decoding
    #: costs in memory is bounded separately by DECODE_MEMORY_MB. At most
    #: Pillow's own bomb limit (89,478,485), so Pillow's check, which is
    #: process-wide and left as Pillow sets it, never refuses what ours admits.
    MAX_IMAGE_PIXELS: Annotated[int, Field(gt=0, le=PILLOW_BOMB_LIMIT)] = 64_000_000
    DEFAULT_TOP_K: Annotated[int, Field(ge=1, le=100)] = 5
    #: Frames per second one Socket.IO client may send (0: no limit); more are
    #: answered `rate_limited`. Bursts of up to one second's worth are allowed.
    MAX_FPS_PER_CLIENT: Annotated[float, Field(ge=0.0)] = 0.0
    #: Frames being answered server-wide beyond which new ones are answered
    #: `overloaded` at once instead of queueing.
    MAX_WAITING_FRAMES: PositiveInt = 512
    #: Seconds a new session has to complete its Socket.IO CONNECT; then it is closed.
    HANDSHAKE_TIMEOUT: Annotated[float, Field(gt=0, le=300)] = 10.0
    #: Hosts or networks (CIDR) that `{"url": ...}` may fetch from even though
    #: they are private or loopback (tests, private deployments).
    URL_FETCH_ALLOW: CommaList = []
    #: Seconds the whole fetch of an image URL may take.
    URL_FETCH_TIMEOUT: PositiveFloat = 10.0
    #: Image URL fetches in progress at once, server-wide; more are answered
    #: `overloaded`. They count as frames in flight too (MAX_WAITING_FRAMES).
    URL_FETCH_CONCURRENCY: Annotated[int, Field(gt=0, le=1000)] = 16

    @field_validator("CORS_ORIGINS", "MODELS_PRELOAD", "URL_FETCH_ALLOW", mode="before")
    @classmethod
    def _comma_separated(cls, value):
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("ASYNC_MODE", "LOG_FORMAT", "RUNTIME", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("LOG_LEVEL", mode="before")
    @classmethod
    def _upper(cls, value):
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("PROJECT_TOKENS")
    @classmethod
    def _tokens_json(cls, value: str):
        if value.strip():
            try:
                json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"must be a JSON object of token -> models ({exc.msg})") from None
        return value


def load_config(overrides: dict | None = None) -> dict:
    """The settings as a plain dict: the environment, then `overrides`, validated.

    Raises `SettingsError` (a ValueError) naming each bad variable and what
    it allows.
    """
    overrides = dict(overrides or {})
    known = {key: overrides.pop(key) for key in list(overrides) if key in Settings.model_fields}
    if "DEFAULT_MODEL" in os.environ:  # set but empty is meaningful: no default model
        known.setdefault("DEFAULT_MODEL", os.environ["DEFAULT_MODEL"])
    try:
        settings = Settings(**known).model_dump()
    except ValidationError as exc:
        raise SettingsError(_explain(exc)) from None
    settings.update(overrides)  # keys only tests and embedders use (START_BACKGROUND, ...)
    settings["DEFAULT_MODEL"] = (settings["DEFAULT_MODEL"] or "").strip()
    settings["SECRET_KEY"] = settings["SECRET_KEY"] or os.urandom(24).hex()
    if "*" in settings["CORS_ORIGINS"] and settings["CORS_CREDENTIALS"]:
        raise SettingsError("CORS_ORIGINS='*' is refused when CORS_CREDENTIALS is on: list the origins instead")
    from .frames.access import AccessPolicy

    AccessPolicy(settings["PROJECT_TOKENS"], settings["ADMIN_TOKEN"])  # token -> model rules are well formed
    _derive_budgets(settings)
    if settings["FRAME_THREADS"] is None:
        settings["FRAME_THREADS"] = max(2, min(8, usable_cpus()))
    return settings


#: The container's CPU quota: cgroup v2 ("quota period", or "max"), else v1
#: (quota and period in two files; -1 for none).
CPU_MAX_V2 = "/sys/fs/cgroup/cpu.max"
CPU_QUOTA_V1 = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"


def usable_cpus(cpu_max: str = CPU_MAX_V2, cfs_quota: str = CPU_QUOTA_V1) -> int:
    """The CPUs this process may use: its affinity, capped by the container's
    CPU quota (cgroup v2 `cpu.max`, else v1 `cpu.cfs_quota_us`, as Docker's
    `--cpus` sets them) when there is one, rounded up."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cpu_quota(cpu_max, cfs_quota)
    return min(cpus, max(1, math.ceil(quota))) if quota else cpus


def _cpu_quota(cpu_max: str, cfs_quota: str) -> float | None:
    """CPUs' worth of time per period the quota allows, or None for no quota."""
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
        if quota != "max":  # "max": no quota at this level, as for the memory limit
            return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path(cfs_quota).read_text())
        period_us = int(Path(cfs_quota).with_name("cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _derive_budgets(settings: dict) -> None:
    """Fill the memory-derived defaults from the container's limit."""
    from .server.memory import memory_limit

    if settings["MEMORY_LIMIT_MB"]:
        limit, source = int(settings["MEMORY_LIMIT_MB"] * 1024 * 1024), "MEMORY_LIMIT_MB"
    else:
        limit, source = memory_limit()
    settings["MEMORY_LIMIT_BYTES"], settings["MEMORY_LIMIT_SOURCE"] = limit, source
    limit_mb = limit / (1024 * 1024)
    if settings["MODEL_MEMORY_MB"] is None:
        settings["MODEL_MEMORY_MB"] = round(limit_mb * MODEL_MEMORY_SHARE, 1)
    if settings["DECODE_MEMORY_MB"] is None:
        settings["DECODE_MEMORY_MB"] = round(min(DECODE_MEMORY_CAP_MB, limit_mb * DECODE_MEMORY_SHARE), 1)
    if settings["MAX_CONNECTIONS"] is None:
        low, high = MAX_CONNECTIONS_RANGE
        settings["MAX_CONNECTIONS"] = max(low, min(high, int(limit * CONNECTION_SHARE // CONNECTION_COST_BYTES)))


def _explain(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        got = error.get("input")
        message = error["msg"]
        if error["type"] == "literal_error":
            message = "must be one of " + message.split("Input should be ", 1)[-1]
        lines.append(f"{name}={got!r}: {message}")
    return "invalid settings: " + "; ".join(lines)
