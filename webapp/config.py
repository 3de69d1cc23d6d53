"""Settings, read once from environment variables.

Every setting has a documented default so that `python -m webapp serve` works
on a fresh machine with no configuration at all. `create_app(config)` accepts a
mapping that overrides any of them, which is how tests and embedders configure
the app without touching the process environment.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root: the bundled model store, templates and static files
#: live beside the package rather than inside it.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _env_str(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def _env_list(name: str, default: str = "") -> list[str]:
    raw = _env_str(name, default)
    return [item.strip() for item in raw.split(",") if item.strip()]


ASYNC_MODES = ("eventlet", "threading")


class Config:
    """Defaults and environment overrides; attribute names are the variable names."""

    # --- process ---------------------------------------------------------
    #: Concurrency model: "eventlet" (eventlet's WSGI server via socketio.run)
    #: or "threading" (simple-websocket under gunicorn's gthread worker).
    ASYNC_MODE = _env_str("ASYNC_MODE", "eventlet").lower()
    HOST = _env_str("HOST", "127.0.0.1")
    PORT = _env_int("PORT", 5000)
    #: gunicorn gthread worker threads in threading mode; each open websocket
    #: holds one thread, so this bounds concurrent Socket.IO clients.
    THREADS = _env_int("THREADS", 100)
    LOG_LEVEL = _env_str("LOG_LEVEL", "INFO").upper()
    #: "text" or "json" (one object per line).
    LOG_FORMAT = _env_str("LOG_FORMAT", "text").lower()
    SECRET_KEY = _env_str("SECRET_KEY", "") or os.urandom(24).hex()

    #: Origins (scheme://host:port, comma separated) allowed to connect from
    #: other sites, for Socket.IO and the HTTP API. Empty: same origin only.
    CORS_ORIGINS = _env_list("CORS_ORIGINS", "")
    #: Allow credentials (cookies, Authorization) on cross-origin requests.
    CORS_CREDENTIALS = _env_str("CORS_CREDENTIALS", "false").lower() in ("1", "true", "yes")

    #: Redis URL shared by several server processes (Socket.IO message queue
    #: and model notifications). Empty: a single process.
    MESSAGE_QUEUE = _env_str("MESSAGE_QUEUE", "")

    #: JSON: token -> models it may use (names, or prefixes ending in "*").
    PROJECT_TOKENS = os.environ.get("PROJECT_TOKENS", "")
    #: The operators' token: every model, /dashboard, /metrics, monitor.
    ADMIN_TOKEN = os.environ.get("ADMIN_TOKEN", "")

    # --- models ----------------------------------------------------------
    #: Where models are stored: a directory (default: the bundled `models/`).
    MODEL_STORE = _env_str("MODEL_STORE", str(PROJECT_ROOT / "models"))
    #: Model used by /readyz and pre-selected by the pages.
    #: Set it empty to have no default model (readiness then follows the store).
    DEFAULT_MODEL = os.environ.get("DEFAULT_MODEL", "shapes").strip()
    #: Models loaded at start-up, comma separated (in the background).
    MODELS_PRELOAD = _env_list("MODELS_PRELOAD", "")
    #: Most frames answered by one model call. Frames that arrive while the
    #: model is busy are batched into the next call, up to this many.
    MAX_BATCH = _env_int("MAX_BATCH", 32)
    #: Runtime: auto (LiteRT when the conversion is faithful, else TensorFlow),
    #: litert, or tensorflow.
    RUNTIME = _env_str("RUNTIME", "auto").lower()
    #: Threads per LiteRT interpreter, and interpreters per model: chosen by
    #: measurement (webapp/runtime/litert_runtime.py, README "Speed").
    LITERT_THREADS = _env_int("LITERT_THREADS", 2)
    LITERT_INTERPRETERS = _env_int("LITERT_INTERPRETERS", 2)
    #: How long a frame may wait for its model to be loaded before it is
    #: answered `model_unavailable`.
    MODEL_LOAD_TIMEOUT = _env_float("MODEL_LOAD_TIMEOUT", 120.0)

    # --- remote store, cache and memory -----------------------------------
    #: Local directory for downloaded models and the warm set.
    MODEL_CACHE_DIR = _env_str("MODEL_CACHE_DIR", str(Path.home() / ".cache" / "webapp" / "models"))
    #: Disk bound of the cache; least recently used models are evicted first.
    MODEL_CACHE_MAX_MB = _env_float("MODEL_CACHE_MAX_MB", 2048.0)
    #: Memory bound of loaded models (measured bytes); LRU unloaded first.
    MODEL_MEMORY_MB = _env_float("MODEL_MEMORY_MB", 512.0)
    #: Optional bound on the number of loaded models (0: no bound).
    MAX_LOADED_MODELS = _env_int("MAX_LOADED_MODELS", 0)
    #: How often a model in use is checked for a new version in the store.
    MODEL_REFRESH_SECONDS = _env_float("MODEL_REFRESH_SECONDS", 60.0)
    #: How long the store's model list is cached.
    MODEL_LIST_TTL = _env_float("MODEL_LIST_TTL", 30.0)
    #: How many recently used models are loaded again after a restart.
    WARM_SET_SIZE = _env_int("WARM_SET_SIZE", 5)
    #: S3-compatible endpoint (MinIO, Ceph, ...); empty for AWS itself.
    S3_ENDPOINT_URL = _env_str("S3_ENDPOINT_URL", "")
    S3_CONNECT_TIMEOUT = _env_float("S3_CONNECT_TIMEOUT", 3.0)
    S3_READ_TIMEOUT = _env_float("S3_READ_TIMEOUT", 10.0)
    S3_MAX_ATTEMPTS = _env_int("S3_MAX_ATTEMPTS", 3)

    # --- input limits ----------------------------------------------------
    #: Largest encoded image accepted (bytes, after base64 decoding).
    MAX_FRAME_BYTES = _env_int("MAX_FRAME_BYTES", 4 * 1024 * 1024)
    #: Largest image accepted, checked from the header before decoding.
    MAX_IMAGE_PIXELS = _env_int("MAX_IMAGE_PIXELS", 40_000_000)
    DEFAULT_TOP_K = 5
    #: Frames per second one Socket.IO client may send (0: no limit); more are
    #: answered `rate_limited`. Bursts of up to one second's worth are allowed.
    MAX_FPS_PER_CLIENT = _env_float("MAX_FPS_PER_CLIENT", 0.0)
    #: Frames being answered server-wide beyond which new ones are answered
    #: `overloaded` at once instead of queueing.
    MAX_WAITING_FRAMES = _env_int("MAX_WAITING_FRAMES", 512)
    #: Hosts or networks (CIDR) that `{"url": ...}` may fetch from even though
    #: they are private or loopback (tests, private deployments).
    URL_FETCH_ALLOW = _env_list("URL_FETCH_ALLOW", "")
    #: Seconds the whole fetch of an image URL may take.
    URL_FETCH_TIMEOUT = _env_float("URL_FETCH_TIMEOUT", 10.0)


def load_config(overrides: dict | None = None) -> dict:
    """Return the settings as a plain dict: Config's values plus `overrides`.

    Values are validated here, once, so a typo in an environment variable
    fails loudly at start-up rather than on the first frame.
    """
    settings = {key: getattr(Config, key) for key in dir(Config) if key.isupper()}
    if overrides:
        settings.update(overrides)
    if settings["ASYNC_MODE"] not in ASYNC_MODES:
        raise ValueError(
            f"ASYNC_MODE must be one of {', '.join(ASYNC_MODES)}, got {settings['ASYNC_MODE']!r}"
        )
    if "*" in settings["CORS_ORIGINS"] and settings["CORS_CREDENTIALS"]:
        raise ValueError("CORS_ORIGINS='*' is refused when CORS_CREDENTIALS is on: list the origins instead")
    from .access import AccessPolicy

    AccessPolicy(settings["PROJECT_TOKENS"], settings["ADMIN_TOKEN"])  # fails loudly on bad JSON
    if settings["RUNTIME"] not in ("auto", "litert", "tensorflow"):
        raise ValueError(f"RUNTIME must be auto, litert or tensorflow, got {settings['RUNTIME']!r}")
    for key in ("MAX_BATCH", "MAX_FRAME_BYTES", "MAX_IMAGE_PIXELS", "PORT", "THREADS"):
        if int(settings[key]) <= 0:
            raise ValueError(f"{key} must be positive, got {settings[key]!r}")
    return settings
