"""`Client`: one Socket.IO connection to the server, with predict, stream and models."""

from __future__ import annotations

import itertools
import logging
import threading
import time

import socketio

from .errors import ConnectError, PredictionError
from .images import encode_image

log = logging.getLogger(__name__)

#: Codes after which a stream slows down (doubling its interval, up to
#: BACKOFF_MAX_S) until the next `label` brings a fresh hint.
BACKOFF_CODES = ("rate_limited", "overloaded")
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 2.0
#: Pause before reconnecting, doubling up to the maximum while it fails.
RECONNECT_DELAY_S, RECONNECT_DELAY_MAX_S = 1.0, 5.0


class _Waiter:
    """One request waiting for its ack, or for the connection to drop."""

    __slots__ = ("done", "answer", "lost")

    def __init__(self):
        self.done = threading.Event()
        self.answer = None
        self.lost = False

    def acked(self, *args):
        self.answer = args[0] if args else None
        self.done.set()


class Client:
    """A connection to a webapp server.

    Connects on construction (raises `ConnectError` if it cannot, with the
    server's reason such as "unauthorized"); `close()` or leaving a `with`
    block disconnects. A dropped connection is re-established in the
    background, 1 s to 5 s apart (python-socketio's reconnection, and ours
    when the server closed it, e.g. while shutting down); requests made
    meanwhile wait for it up to `timeout` seconds.

    Every request asks for an acknowledgement, so answers come back to the
    call that sent the frame: one thread may stream while another predicts.
    """

    def __init__(self, server_url: str, token: str | None = None, timeout: float = 60, *,
                 transports=None, headers: dict | None = None):
        self.server_url = server_url
        self.timeout = float(timeout)
        self._ids = itertools.count()
        self._waiters: set[_Waiter] = set()
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._closed = False
        self._stop = threading.Event()  # set by close(): ends our own reconnection loop
        self._connect_args = {}
        self._refusal = self._transport_error = None
        self._callbacks = {"model_status": [], "connect": [], "disconnect": []}
        self._sio = socketio.Client(reconnection=True, reconnection_delay=RECONNECT_DELAY_S,
                                    reconnection_delay_max=RECONNECT_DELAY_MAX_S)
        self._sio.on("connect", self._on_connect)
        self._sio.on("disconnect", self._on_disconnect)
        self._sio.on("connect_error", self._on_connect_error)
        self._sio.on("model_status", self._on_model_status)
        self._connect(token, transports, headers or {})

    # --- connection -------------------------------------------------------

    def _connect(self, token, transports, headers) -> None:
        auth = {"token": token} if token else None
        # WebSocket first (one connection, no sticky sessions needed between
        # several server processes); if the transport itself fails (a proxy
        # without WebSocket support), polling with an upgrade attempt.
        attempts = [list(transports)] if transports else [["websocket"], ["polling", "websocket"]]
        for index, attempt in enumerate(attempts):
            self._refusal = self._transport_error = None
            try:
                self._sio.connect(self.server_url, transports=attempt, auth=auth, headers=headers,
                                  wait_timeout=self.timeout)
                self._connect_args = {"transports": attempt, "auth": auth, "headers": headers}
                return
            except (socketio.exceptions.ConnectionError, ValueError) as exc:
                reason = self._refusal or self._transport_error or str(exc) or type(exc).__name__
                if self._refusal is not None or index == len(attempts) - 1:
                    self._sio.shutdown()
                    raise ConnectError(self.server_url, reason) from None

    def _on_connect(self):
        self._connected.set()
        self._notify("connect")

    def _on_disconnect(self, reason=None):
        self._connected.clear()
        self._fail_waiters()
        self._notify("disconnect")
        # python-socketio reconnects after a lost transport, but not when the
        # server closed the connection, which is what a server does when it
        # shuts down (it says "connect again to reach another one"): reconnect.
        if reason == socketio.Client.reason.SERVER_DISCONNECT and not self._closed:
            threading.Thread(target=self._reconnect_after_server_disconnect, daemon=True).start()

    def _reconnect_after_server_disconnect(self) -> None:
        delay = RECONNECT_DELAY_S
        while not self._closed and not self._connected.is_set():
            if self._stop.wait(delay):
                return
            try:
                self._sio.connect(self.server_url, wait_timeout=self.timeout, **self._connect_args)
            except (socketio.exceptions.ConnectionError, ValueError):
                delay = min(RECONNECT_DELAY_MAX_S, delay * 2)
                log.debug("reconnecting to %s failed; next try in %.0f s", self.server_url, delay)

    def _fail_waiters(self) -> None:
        """Wake every request: its ack will never come (python-socketio dropped its callbacks)."""
        with self._lock:
            waiting = list(self._waiters)
        for waiter in waiting:
            waiter.lost = True
            waiter.done.set()

    def _on_connect_error(self, data=None):
        # The server's refusal is a Socket.IO CONNECT_ERROR {"message": ...};
        # a transport failure arrives here too, as text, and is not a refusal.
        if isinstance(data, dict):
            self._refusal = str(data.get("message") or "refused")
        else:
            self._transport_error = str(data) if data else None

    def _on_model_status(self, data=None):
        self._notify("model_status", data)

    def _notify(self, kind: str, *args) -> None:
        for callback in list(self._callbacks[kind]):
            try:
                callback(*args)
            except Exception:  # a caller's bug must not break the connection's thread
                log.exception("%s callback failed", kind)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def on_model_status(self, callback):
        """Call `callback(event)` for every `model_status` event: {"model", "state", "progress", ...}.

        Called on the connection's thread: return quickly. Usable as a decorator.
        """
        self._callbacks["model_status"].append(callback)
        return callback

    def on_connect(self, callback):
        """Call `callback()` on every (re)connection. Usable as a decorator."""
        self._callbacks["connect"].append(callback)
        return callback

    def on_disconnect(self, callback):
        """Call `callback()` whenever the connection drops or is closed. Usable as a decorator."""
        self._callbacks["disconnect"].append(callback)
        return callback

    def close(self) -> None:
        """Disconnect and stop reconnecting. Safe to call twice."""
        self._closed = True
        self._stop.set()
        self._sio.shutdown()  # triggers our disconnect handler if it was connected
        self._connected.clear()
        self._fail_waiters()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- requests ---------------------------------------------------------

    def _request(self, event: str, data):
        """Send `event` asking for an ack; the ack's object, or raise PredictionError."""
        if self._closed:
            raise PredictionError("disconnected", "The client is closed.", _frame_id(data))
        if not self._connected.wait(self.timeout):
            raise PredictionError("disconnected", f"Not connected to {self.server_url}, and the connection "
                                  f"did not come back within {self.timeout:g} s.", _frame_id(data))
        waiter = _Waiter()
        with self._lock:
            self._waiters.add(waiter)
        try:
            try:
                self._sio.emit(event, data, callback=waiter.acked)
            except socketio.exceptions.SocketIOError:  # dropped between the check and the send
                waiter.lost = True
            else:
                if not waiter.done.wait(self.timeout):
                    raise PredictionError("timeout", f"No answer within {self.timeout:g} s.", _frame_id(data))
            if waiter.lost:
                raise PredictionError("disconnected", "The connection dropped before the answer arrived; "
                                      "it is being re-established.", _frame_id(data))
            return waiter.answer
        finally:
            with self._lock:
                self._waiters.discard(waiter)

    def _send_frame(self, image, model: str, top_k: int, frame_id) -> dict:
        answer = self._request("frame", {"model": model, "image": image, "id": frame_id, "top_k": top_k})
        if not isinstance(answer, dict) or "code" in answer:
            raise PredictionError.from_answer(answer if isinstance(answer, dict) else
                                              {"code": "internal", "message": f"unexpected answer {answer!r}"})
        return answer

    def predict(self, image, model: str, top_k: int = 5, *, frame_id=None) -> dict:
        """Label one image: the server's `label` object, or raise `PredictionError`.

        `image`: a path, bytes, a data URL, a PIL image, or a numpy array
        (height, width, 3) of uint8 RGB. `frame_id` is echoed back (default:
        a counter of this client).
        """
        payload = encode_image(image)
        return self._send_frame(payload, model, top_k, next(self._ids) if frame_id is None else frame_id)

    def stream(self, frames, model: str, fps: float | None = None, top_k: int = 5) -> "Stream":
        """Send `frames` one at a time; iterate the result for one answer per frame.

        See `Stream` for the pacing. `frames` is any iterable of what
        `predict` takes, pulled only when a frame may leave; use a
        `LatestFrame` for a live source so the newest frame is the one sent.
        """
        if fps is not None and fps <= 0:
            raise ValueError("fps must be positive (or None for no limit but the server's hint)")
        return Stream(self, frames, model, fps, top_k)

    def models(self) -> list[dict]:
        """The models this client may use: [{"name", "version", "loaded", "state", ...}]."""
        answer = self._request("models", None)
        if not isinstance(answer, dict) or "models" not in answer:
            raise PredictionError.from_answer(answer if isinstance(answer, dict) else
                                              {"code": "internal", "message": f"unexpected answer {answer!r}"})
        return answer["models"]


class Stream:
    """One answer per frame, paced by the server.

    The next frame leaves when the previous one is answered, and no sooner
    than `1/fps` nor the last `label.hint.interval_ms` after the previous one
    left: following the hint, frames neither queue nor get superseded on the
    server. After `rate_limited` or `overloaded` the interval doubles (0.1 s
    to 2 s) until a `label` brings a new hint. Answers are the `label` dicts,
    or `PredictionError` objects (yielded, not raised). Only one frame is in
    flight, so a stream holds no buffer of its own.
    """

    def __init__(self, client: Client, frames, model: str, fps: float | None, top_k: int):
        self._client, self._frames, self.model, self.top_k = client, frames, model, top_k
        self.min_interval_s = 1.0 / fps if fps else 0.0
        #: Current pause between sends, from the fps limit and the server's hint.
        self.interval_s = self.min_interval_s
        self.sent = 0
        #: Milliseconds from sending the last frame to its answer.
        self.last_round_trip_ms: float | None = None

    def __iter__(self):
        frames = iter(self._frames)
        next_send = time.monotonic()
        for index in itertools.count():
            wait = next_send - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:  # pulled only now, so a live source gives its newest frame
                frame = next(frames)
            except StopIteration:
                return
            payload = encode_image(frame)
            sent_at = time.monotonic()
            self.sent += 1
            try:
                answer = self._client._send_frame(payload, self.model, self.top_k, index)
            except PredictionError as exc:
                answer = exc
            self.last_round_trip_ms = (time.monotonic() - sent_at) * 1000.0
            if isinstance(answer, dict):
                hint_ms = (answer.get("hint") or {}).get("interval_ms") or 0
                self.interval_s = max(self.min_interval_s, float(hint_ms) / 1000.0)
            elif answer.code in BACKOFF_CODES:
                self.interval_s = min(BACKOFF_MAX_S, max(BACKOFF_MIN_S, self.interval_s * 2))
            next_send = sent_at + self.interval_s
            yield answer


def _frame_id(data):
    return data.get("id") if isinstance(data, dict) else None
