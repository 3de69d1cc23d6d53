"""Socket.IO transport: `frame` and `models` events on the default namespace.

A `frame` is answered with a `label` or `error` event to the sender, or, when
the client asked for an acknowledgement (`sio.call("frame", ...)`), with the
same object as the ack instead. Errors never close the connection.
"""

from __future__ import annotations

import functools
import logging
import os
import socket as _socket
import threading
import time

from flask import current_app, request
from flask_socketio import ConnectionRefusedError  # Socket.IO's own, not the builtin OSError

from ..errors import BadRequest, RateLimited, ServingError, Unauthorized, UnknownModel
from ..extensions import socketio
from ..frames.access import OPEN, Grant
from ..frames.service import PredictionService, FrameRequest, safe_frame_id
from ..models.modelspec import is_valid_model_name
from ..server import socketio_internals
from ..server.connections import OVER_CAPACITY
from .attachment_limit import RefusedAttachments

log = logging.getLogger(__name__)

def watch_events(server, run=None) -> None:
    """Note whether each event asked for an ack and its place in the reading
    order (see `socketio_internals`), and answer events whose binary
    attachments were refused (`attachment_limit`) without running their
    handler. `run`: where handlers run, for a server that does not start a
    thread per event (`server/handler_threads.py`)."""
    socketio_internals.watch_events(server, _refused_attachments, _emit_to_client, run)
    # Registered with python-socketio itself rather than through Flask-SocketIO,
    # which builds a Flask request context and opens the cookie session for
    # every event: 6-8 % of the event loop's time per frame, for a handler that
    # needs neither (measured with py-spy under 8 clients).
    server.on("frame", handler=functools.partial(on_frame, server))


def _refused_attachments(data: list) -> dict | None:
    if len(data) > 1 and isinstance(data[1], RefusedAttachments):
        log.info("refused an event: it declared %d binary attachments", data[1].declared)
        return BadRequest(data[1].message()).to_dict(safe_frame_id(data[1].header))
    return None


def _emit_to_client(sid: str, event: str, payload: dict) -> None:
    """An event for one client of this process, never through the message queue.

    The client is connected here, so the queue would only add a Redis round
    trip per frame, and a Redis outage would silently swallow the answers.
    """
    socketio.server.emit(event, payload, to=sid, ignore_queue=True)


def _reply(event: str, payload: dict, sid: str | None = None):
    """Answer the sender: as the ack if one was requested, else as an event."""
    if socketio_internals.ack_requested():
        return payload
    _emit_to_client(sid or request.sid, event, payload)
    return None


def _service(app=None) -> PredictionService:
    return (app or current_app).extensions["predictions"]


def model_room(model: str) -> str:
    """Every client that sent frames for `model` is in this room."""
    return f"model:{model}"


def announce_to_model_users(model: str, payload: dict) -> None:
    """News about a model (a new version, a failed update) for all its users.

    Local to this process (`ignore_queue`): with several processes each one
    swaps its own copy and tells its own clients when *they* see the change.
    """
    socketio.server.emit("model_status", payload, to=model_room(model), ignore_queue=True)


#: Identifies this process in monitor copies (several processes share a queue).
PROCESS_ID = f"{_socket.gethostname()}:{os.getpid()}"


#: Monitor rooms one connection may be in (each model's, and the one for all).
MONITOR_ROOMS_PER_CONNECTION = 16
#: Counting a connection's monitor rooms and joining one is one step (threading
#: mode runs a connection's events on several threads). Never held across a yield.
_joining_monitor = threading.Lock()
_MONITOR = "monitor"


def monitor_room(model: str | None = None) -> str:
    return f"{_MONITOR}:{model}" if model else _MONITOR


def _is_monitor_room(room: str) -> bool:
    return room == _MONITOR or room.startswith(f"{_MONITOR}:")


def publish_monitor_copy(copy: dict) -> None:
    """Send a prediction copy to the monitor rooms of every process (via the queue, if any)."""
    socketio.emit("prediction", copy, to=[monitor_room(copy["model"]), monitor_room()])


def _room_members(server, room: str):
    """The clients of this process in `room` (python-socketio's own table: a dict lookup)."""
    return server.manager.rooms.get("/", {}).get(room) or {}


def _monitored(model: str) -> bool:
    """Whether a client of this process is in a monitor room for `model`.

    Two dict lookups: without a message queue, a copy nobody watches is not
    built at all (it cost a Socket.IO emit per frame)."""
    server = socketio.server
    return bool(_room_members(server, monitor_room(model)) or _room_members(server, monitor_room()))


def _copy_to_monitors(app, result: dict) -> None:
    """A live copy of a prediction for dashboards, from every process."""
    feed = app.extensions.get("monitor_feed")
    if feed is None and not _monitored(result["model"]):
        return
    copy = {key: result[key] for key in ("model", "version", "runtime", "labels", "timing")}
    copy["process"] = PROCESS_ID
    if feed is not None:
        feed.put(copy)  # a message queue: published off the frame's path
    else:
        publish_monitor_copy(copy)


def _status_emitter(sid: str):
    def emit_status(model: str, state: str, progress: float) -> None:
        _emit_to_client(sid, "model_status", {"model": model, "state": state, "progress": round(progress, 3)})

    return emit_status


def _grant(environ: dict | None = None) -> Grant:
    # The environ is kept for the whole connection, so the grant made at
    # connect time is seen by every later event of this client.
    return (request.environ if environ is None else environ).get("webapp.grant", OPEN)


@socketio.on("connect")
def on_connect(auth=None):
    if _service().draining:
        raise ConnectionRefusedError("shutting_down")
    if request.environ.get(OVER_CAPACITY):
        log.info("refused a client: MAX_CONNECTIONS sessions are open")
        raise ConnectionRefusedError(*current_app.extensions["connections"].refusal())
    token = auth.get("token") if isinstance(auth, dict) else None
    grant = current_app.extensions["access"].identify(token)
    if grant is None:
        log.info("refused a client: missing or unknown token")
        raise ConnectionRefusedError("unauthorized")
    request.environ["webapp.grant"] = grant
    current_app.extensions["metrics"].connected += 1


@socketio.on("disconnect")
def on_disconnect(*_):
    current_app.extensions["metrics"].connected -= 1


class _TokenBucket:
    """`rate` frames per second, with bursts of up to one second's worth."""

    def __init__(self, rate: float):
        self.rate, self.tokens, self.stamp = rate, max(1.0, rate), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(max(1.0, self.rate), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def _check_rate(config, environ: dict) -> None:
    rate = float(config["MAX_FPS_PER_CLIENT"])
    if rate <= 0:
        return
    bucket = environ.setdefault("webapp.bucket", _TokenBucket(rate))
    if not bucket.take():
        raise RateLimited(f"At most {rate:g} frames per second per client; follow label.hint.interval_ms.")


def on_frame(server, sid: str, data=None, *extra):
    """A `frame` event (registered by `watch_events`, with `server` bound).

    Runs without a Flask request context: what it needs, the app and the
    client's grant and rate bucket, comes from the connection's environ.
    """
    environ = server.get_environ(sid)
    if not environ:  # the client left before its event was dispatched
        return None
    app = environ["flask.app"]
    service = _service(app)
    try:
        _check_rate(app.config, environ)
        frame = FrameRequest.parse(data, service.default_top_k)
        _grant(environ).require(frame.model)
        # The connection's environ lives exactly as long as the client: so does its record of answers.
        result = service.predict(frame, client_key=sid, on_status=_status_emitter(sid),
                                 arrival=socketio_internals.arrival(),
                                 answered=environ.setdefault("webapp.answered", {}))
        _copy_to_monitors(app, result)
        # Joined once the model answered, so unknown names create no rooms; and
        # only the first time (later frames find the client in the room already).
        room = model_room(frame.model)
        if sid not in _room_members(server, room):
            try:
                server.enter_room(sid, room)
            except KeyError:  # python-socketio's answer for a client that left meanwhile
                log.debug("client %s left before its frame was answered", sid)
                return None
    except ServingError as exc:
        return _reply("error", exc.to_dict(safe_frame_id(data)), sid)
    except Exception:
        log.exception("unexpected error while answering a frame")
        return _reply("error", {"id": safe_frame_id(data), "code": "internal",
                                "message": "The server failed on this frame; it has been logged."}, sid)
    return _reply("label", result, sid)


@socketio.on("models")
def on_models(*_args):
    try:
        payload = _service().list_models(_grant())
    except ServingError as exc:
        return _reply("error", exc.to_dict())
    return _reply("models", payload)


@socketio.on("monitor")
def on_monitor(data=None, *_):
    """Join the monitor room: every prediction (of one model, or of all), live.

    A connection's rooms last as long as it does, so it may watch at most
    MONITOR_ROOMS_PER_CONNECTION of them, each named by a valid model name.
    """
    model = data.get("model") if isinstance(data, dict) else None
    if model is not None and not isinstance(model, str):
        return _reply("error", BadRequest("'model' must be a string.").to_dict())
    if current_app.extensions["access"].enabled and not _grant().admin:
        return _reply("error", Unauthorized("The monitor room needs the admin token.").to_dict())
    if model and not is_valid_model_name(model):
        return _reply("error", UnknownModel.named(model).to_dict())
    room = monitor_room(model)
    with _joining_monitor:
        watching = [joined for joined in socketio.server.rooms(request.sid) if _is_monitor_room(joined)]
        full = room not in watching and len(watching) >= MONITOR_ROOMS_PER_CONNECTION
        if not full:
            socketio.server.enter_room(request.sid, room)
    if full:
        return _reply("error", BadRequest(
            f"A connection may watch at most {MONITOR_ROOMS_PER_CONNECTION} monitor rooms.").to_dict())
    return _reply("monitoring", {"room": room, "process": PROCESS_ID})


@socketio.on_error_default
def on_unexpected_error(exc):
    """Any other handler failing: tell the sender, keep the connection."""
    log.exception("unexpected error in a Socket.IO handler")
    if isinstance(exc, ServingError):
        return _reply("error", exc.to_dict())
    return _reply("error", {"id": None, "code": "internal",
                            "message": "The server failed on this event; it has been logged."})
