"""The application factory: wires settings, store, registry, data plane and transports."""

from __future__ import annotations

import json
import logging
import sys

from flask import Flask

from .config import PROJECT_ROOT, load_config
from .extensions import socketio
from .frames.access import AccessPolicy
from .frames.batching import batcher_factory
from .frames.service import PredictionService
from .models.cache import DiskCache
from .models.registry import ModelRegistry
from .models.store import open_store
from .server.async_mode import Concurrency
from .server.connections import bound_connections
from .server.handler_threads import HandlerThreads
from .server.lifecycle import Lifecycle
from .server import library_internals
from .server.memory import MemoryWatch, return_freed_memory_to_the_system
from .server.metrics import Metrics
from .server.status_board import StatusBoard, start_status_feed
from .web import health, http_api, monitoring, pages, socketio_events
from .web.attachment_limit import BoundedPacket, quiet_malformed_packets
from .web.cors import OriginPolicy


def socketio_buffer_limit(max_frame_bytes: int) -> int:
    """Socket.IO's own message limit: comfortably above the frame limit.

    A frame a little over MAX_FRAME_BYTES (even base64-encoded, +33%) must
    still reach our handler to be answered `too_large`; only a message over
    this limit makes Engine.IO drop the connection.
    """
    return 2 * max_frame_bytes + 64 * 1024


def create_app(config: dict | None = None) -> Flask:
    """Build the app. `config` overrides settings read from the environment."""
    settings = load_config(config)
    _configure_logging(settings["LOG_LEVEL"], settings["LOG_FORMAT"])
    # Before anything is built: a library upgrade that moved an internal the
    # server relies on stops it here, naming the internal (InternalsChanged).
    library_internals.check(settings["ASYNC_MODE"])

    app = Flask(
        __name__,
        static_folder=str(PROJECT_ROOT / "static"),
        template_folder=str(PROJECT_ROOT / "templates"),
    )
    app.config.update(settings)
    # HTTP bodies: a frame as multipart or base64 JSON, plus form overhead.
    app.config["MAX_CONTENT_LENGTH"] = settings["MAX_FRAME_BYTES"] * 4 // 3 + 64 * 1024

    # Each component gets what it needs when it is built, in dependency order:
    # server primitives -> models -> frames -> transports.
    return_freed_memory_to_the_system()
    memory = MemoryWatch(settings)
    memory.announce()
    concurrency = Concurrency.for_mode(settings["ASYNC_MODE"], settings["FRAME_THREADS"])
    metrics = Metrics()
    cache = DiskCache(settings["MODEL_CACHE_DIR"], int(float(settings["MODEL_CACHE_MAX_MB"]) * 1024 * 1024))
    store = open_store(settings["MODEL_STORE"], cache, settings, on_download=metrics.downloaded)
    registry = ModelRegistry(store, concurrency, settings, cache,
                             make_batcher=batcher_factory(concurrency, int(settings["MAX_BATCH"])),
                             announce=socketio_events.announce_to_model_users)
    metrics.watch(registry, cache, memory)
    board = StatusBoard(registry, cache, metrics, socketio_events.PROCESS_ID, memory)
    service = PredictionService(registry, concurrency, settings, observers=(metrics, board))
    app.extensions["predictions"] = service
    app.extensions["metrics"], app.extensions["status"] = metrics, board
    app.extensions["lifecycle"] = Lifecycle(service, socketio, concurrency)
    app.extensions["access"] = AccessPolicy(settings["PROJECT_TOKENS"], settings["ADMIN_TOKEN"])

    threaded = settings["ASYNC_MODE"] == "threading"
    origins = settings["CORS_ORIGINS"]
    # The server's own origin always, plus CORS_ORIGINS ("*": any); see webapp/cors.py.
    origin_policy = app.extensions["origin_policy"] = OriginPolicy(origins)
    socketio.init_app(
        app,
        async_mode=settings["ASYNC_MODE"],
        cors_allowed_origins="*" if origin_policy.any else origin_policy,
        cors_credentials=settings["CORS_CREDENTIALS"],
        message_queue=settings["MESSAGE_QUEUE"] or None,
        serializer=BoundedPacket,  # refuses events with more binaries than a frame carries
        channel="webapp-socketio",
        max_http_buffer_size=socketio_buffer_limit(settings["MAX_FRAME_BYTES"]),
        # Threading mode: handlers on kept threads, not a new thread per event
        # (server/handler_threads.py); green threads cost little to start.
        async_handlers=not threaded,
    )
    socketio_events.watch_events(socketio.server, run=HandlerThreads().run if threaded else None)
    bound_connections(app, socketio.server, settings)  # message size, MAX_CONNECTIONS, HANDSHAKE_TIMEOUT
    quiet_malformed_packets()
    if origins:
        from flask_cors import CORS

        CORS(app, resources={r"/api/*": {"origins": "*" if origin_policy.any else origin_policy.listed}},
             supports_credentials=settings["CORS_CREDENTIALS"])
    http_api.init_app(app)
    health.init_app(app)
    pages.init_app(app)
    monitoring.init_app(app)

    if settings.get("START_BACKGROUND", True):
        service.start(settings["MODELS_PRELOAD"])
        start_status_feed(socketio, board, concurrency)
        if settings["MESSAGE_QUEUE"]:
            from .server.messaging import ControlListener
            from .server.monitor_feed import MonitorFeed

            ControlListener(settings["MESSAGE_QUEUE"], registry, concurrency).start()
            app.extensions["monitor_feed"] = MonitorFeed(socketio_events.publish_monitor_copy, concurrency)
    return app


class JsonFormatter(logging.Formatter):
    """One JSON object per line (LOG_FORMAT=json), for log pipelines.

    Ten lines of our own rather than a dependency: the fields are fixed."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _configure_logging(level: str, fmt: str = "text") -> None:
    """Logs go to stdout (12-factor: the platform collects them)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        root.addHandler(handler)
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter() if fmt == "json" else
                             logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.setLevel(level)
    # Engine.IO/Socket.IO log every packet at INFO; keep them for debugging only.
    for noisy in ("engineio.server", "socketio.server", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
