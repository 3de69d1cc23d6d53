"""The data plane: one frame in, one `label` result out, for every transport.

Socket.IO events and HTTP requests both end up in `PredictionService.predict`, so the
protocol's behaviour (validation, error codes, timing fields, result shape) is
defined once. The data plane owns no I/O of its own: it asks the registry for
the model, runs decoding on a native thread, and waits for the model's
batcher.
"""

from __future__ import annotations

import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from ..errors import BadRequest, ModelUnavailable, Overloaded, ServingError, Superseded, UnknownModel
from ..models.modelspec import is_valid_model_name, scores_from_outputs, top_labels
from ..models.registry import ModelRegistry, StatusListener
from ..server.async_mode import Concurrency
from .access import OPEN, Grant
from .batching import BatcherClosed, DeferredInput, overtook
from .decode_budget import DecodeBudget
from .images import decode_cost, model_input, payload_bytes, probe_image
from .url_fetch import UrlPolicy, fetch

MAX_TOP_K = 100
#: How long a frame may wait for its model once queued. A healthy model
#: answers in milliseconds; this only bounds a wedged one.
RESULT_TIMEOUT = 60.0
#: Base64 up to this length is decoded on the calling thread (~50 us); longer
#: text goes to a native thread like the rest of the decoding.
INLINE_BASE64_CHARS = 64 * 1024
#: Images with up to this many pixels to decode (after JPEG draft scaling) are
#: decoded on the model's native thread, in the batch's hop, for a model that
#: takes under BATCH_DECODE_BELOW_MS per frame; larger images get a hop of
#: their own first, so one cannot hold up a batch.
BATCH_DECODE_PIXELS = 640 * 480
#: For a model slower than this per frame (measured by its batcher) the hop
#: costs little next to the model, and decoding beside the model's calls
#: keeps both cores busy: measured with MobileNetV2 (~5 ms), decoding in the
#: batch's hop cost 5-30% of fps at 8 clients.
BATCH_DECODE_BELOW_MS = 2.0
#: Model listings (`models`, `GET /api/models`, the index page) that may run at once.
LISTINGS_AT_ONCE = 8


@dataclass(frozen=True)
class FrameRequest:
    model: str
    image: object
    id: object = None
    top_k: int = 5

    @classmethod
    def parse(cls, data, default_top_k: int = 5) -> "FrameRequest":
        """Validate a frame payload; raises `BadRequest`/`UnknownModel` with a clear message."""
        if not isinstance(data, dict):
            raise BadRequest("A frame must be an object with 'model' and 'image' fields.")
        frame_id = data.get("id")
        if frame_id is not None and (isinstance(frame_id, bool) or not isinstance(frame_id, (str, int, float))):
            raise BadRequest("'id' must be a string or a number.")
        if isinstance(frame_id, str) and len(frame_id) > 256:
            raise BadRequest("'id' must be at most 256 characters.")
        model = data.get("model")
        if model is None:
            raise BadRequest("The frame has no 'model' field.")
        if not isinstance(model, str):
            raise BadRequest("'model' must be a string.")
        if not is_valid_model_name(model):
            raise UnknownModel.named(model)
        if data.get("image") is None:
            raise BadRequest("The frame has no 'image' field.")
        top_k = data.get("top_k", default_top_k)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
            raise BadRequest(f"'top_k' must be an integer from 1 to {MAX_TOP_K}.")
        return cls(model=model, image=data["image"], id=frame_id, top_k=top_k)


def safe_frame_id(data):
    """The id to echo in an error, even for a payload that failed validation."""
    if isinstance(data, dict):
        frame_id = data.get("id")
        if isinstance(frame_id, (str, int, float)) and not isinstance(frame_id, bool):
            return frame_id[:256] if isinstance(frame_id, str) else frame_id
    return None


#: Up to this many scores, the best labels are sorted in Python (see `_top_labels`).
PYTHON_SORT_SCORES = 64


def _top_labels(scores, labels: tuple[str, ...], k: int) -> list[dict]:
    """`modelspec.top_labels`, without numpy's sort for short score vectors.

    numpy releases the GIL to sort even four numbers; on the event loop that
    hands the GIL to a decoding thread and waits for it back, every frame.
    Python's sort is stable like the documented order (ties: label order).
    """
    if len(scores) > PYTHON_SORT_SCORES:
        return top_labels(scores, labels, k)
    values = scores.tolist()
    if any(value != value for value in values):  # NaN: numpy's order, as documented
        return top_labels(scores, labels, k)
    order = sorted(range(len(values)), key=values.__getitem__, reverse=True)[:k]
    return [{"label": labels[i], "score": values[i]} for i in order]


def _decodes_with_batch(batcher) -> bool:
    """Whether frames for this model are decoded in its batch's hop: a fast model (its own
    time per frame, decoding left out), once measured."""
    frame_seconds = getattr(batcher, "mean_inference_seconds", 0.0)
    return 0.0 < frame_seconds * 1000.0 < BATCH_DECODE_BELOW_MS


class _ClientGate:
    """One client's frames for one model, between arrival and the model's queue.

    Only one frame per lane is decoded at a time; a frame arriving meanwhile
    is parked, and a newer arrival supersedes the parked one at once. So under
    overload the excess is answered `superseded` on arrival, instead of piling
    up in front of the decoder where latency and memory would grow.

    Frames a transport numbered in sending order (`arrival`) keep that order
    even when their threads reach the gate the other way round: one older
    than the newest the lane has seen is superseded at once.
    """

    __slots__ = ("busy", "parked", "newest")

    def __init__(self):
        self.busy = False
        self.parked = None  # [event, superseded?] of the frame waiting its turn
        self.newest = None  # the highest `arrival` seen while the lane is in use


class PredictionService:
    def __init__(self, registry: ModelRegistry, concurrency: Concurrency, settings: dict, observers=()):
        self.registry = registry
        self.concurrency = concurrency
        self._gates: dict[tuple, _ClientGate] = {}
        #: Told about every answer: `answered(model, timing)`, `failed(model, code, message)`.
        self.observers = tuple(observers)
        #: Frames being answered right now, and whether shutdown has begun.
        self.in_flight = 0
        self.draining = False
        self.max_waiting = int(settings["MAX_WAITING_FRAMES"])
        self._gates_lock = threading.Lock()  # never held across a yield
        self.max_frame_bytes = int(settings["MAX_FRAME_BYTES"])
        self.max_image_pixels = int(settings["MAX_IMAGE_PIXELS"])
        self.default_top_k = int(settings["DEFAULT_TOP_K"])
        self.default_model = settings["DEFAULT_MODEL"]
        self.url_policy = UrlPolicy(settings["URL_FETCH_ALLOW"], self.max_frame_bytes,
                                    float(settings["URL_FETCH_TIMEOUT"]))
        self.max_url_fetches = int(settings["URL_FETCH_CONCURRENCY"])
        self.url_fetches = 0
        self.listings = 0  # model listings running (`list_models`)
        self.decode_budget = DecodeBudget(int(float(settings["DECODE_MEMORY_MB"]) * 1024 * 1024), concurrency)

    def fetch_url(self, url) -> bytes:
        """An image from a URL a client gave, fetched safely.

        Fetches count as frames in flight and have a bound of their own, and
        they never run on the native threads that decode and run models: a
        fetch is network waiting, which green I/O (eventlet) or the request's
        own thread (threading) does without holding anything shared. So slow
        hosts cannot delay other clients' frames.
        """
        with self._in_flight(), self._counted("url_fetches", self.max_url_fetches,
                                              "The server is fetching too many image URLs; try again "
                                              "shortly, or send the image itself."):
            return fetch(url, self.url_policy)

    @contextmanager
    def _counted(self, attribute: str, limit: int, busy_message: str):
        """Count one operation of a kind that has a bound of its own (`attribute`);
        `overloaded` with `busy_message` when `limit` are running already."""
        with self._gates_lock:
            if getattr(self, attribute) >= limit:
                raise Overloaded(busy_message)
            setattr(self, attribute, getattr(self, attribute) + 1)
        try:
            yield
        finally:
            with self._gates_lock:
                setattr(self, attribute, getattr(self, attribute) - 1)

    @contextmanager
    def _in_flight(self):
        """Count one frame (or fetch) in flight; `overloaded` past the bound or while draining."""
        with self._gates_lock:
            self.in_flight += 1
            busy = self.in_flight
        try:
            if self.draining:
                raise Overloaded("The server is shutting down; connect again to reach another one.")
            if busy > self.max_waiting:
                raise Overloaded("The server has too many frames waiting; send less often and try again.")
            yield
        finally:
            with self._gates_lock:
                self.in_flight -= 1

    def _enter_gate(self, key: tuple, arrival: int | None = None, answered: dict | None = None) -> None:
        """Wait for this frame's turn in its lane, or raise `Superseded`."""
        with self._gates_lock:
            if answered is not None and overtook(answered.get(key[1]), arrival):
                raise Superseded.by_newer_frame()  # a newer frame was answered already: no lane made
            lane = self._gates.setdefault(key, _ClientGate())
            if overtook(lane.newest, arrival):
                raise Superseded.by_newer_frame()  # the lane is busy with a newer frame: no leak
            if arrival is not None:
                lane.newest = arrival
            if not lane.busy:
                lane.busy = True
                return
            if lane.parked is not None:
                lane.parked[1] = True
                lane.parked[0].set()
            waiter = [self.concurrency.event(), False]
            lane.parked = waiter
        waiter[0].wait()
        if waiter[1]:
            raise Superseded.by_newer_frame()

    def _leave_gate(self, key: tuple) -> None:
        """Hand the lane to the parked frame, if any (it is now the newest)."""
        with self._gates_lock:
            lane = self._gates.get(key)
            if lane is None:
                return
            if lane.parked is not None:
                waiter, lane.parked = lane.parked, None
                waiter[0].set()  # its turn: the lane stays busy
            else:
                del self._gates[key]

    def _note_answer(self, model: str, arrival: int | None, answered: dict | None) -> None:
        """Record this frame as its client's newest answer for `model`, or raise
        `Superseded` if a newer one was answered first (it overtook this one)."""
        if answered is None or arrival is None:
            return
        with self._gates_lock:
            if overtook(answered.get(model), arrival):
                raise Superseded.by_newer_frame()
            answered[model] = arrival

    def predict(self, request: FrameRequest, client_key, on_status: StatusListener | None = None,
                arrival: int | None = None, answered: dict | None = None) -> dict:
        """Answer one frame: the `label` object, or raise a `ServingError`.

        `arrival`: the frame's place in its client's sending order, a number
        that grows, when the transport knows it and may hand the client's
        frames to threads that could overtake each other (threading mode's
        kept handler threads). `answered`: a dict the transport keeps for the
        client's connection, where the service notes the newest frame answered
        per model. A frame overtaken by a newer one of its client and model,
        on its way to the model's queue or by being answered first, is
        answered `superseded`, as a frame replaced while waiting is; so a
        client never gets an older frame's label after a newer one's. Without
        them, frames count in the order they reach the service.
        """
        try:
            with self._in_flight():
                result = self._predict(request, client_key, on_status, arrival, answered)
        except ServingError as exc:
            label = self.metric_label(request.model)
            for observer in self.observers:
                observer.failed(label, exc.code, exc.message)
            raise
        for observer in self.observers:
            observer.answered(request.model, result["timing"])
        return result

    def metric_label(self, name: str) -> str:
        """The model name to count a frame under: one `unknown` for names the
        store does not have, so random names cannot grow metrics or status."""
        return name if self.registry.known(name) else "unknown"

    def _predict(self, request: FrameRequest, client_key, on_status, arrival, answered) -> dict:
        started = time.perf_counter()
        lane = (client_key, request.model)
        with ExitStack() as held:  # decode memory reserved for a frame decoded with its batch
            self._enter_gate(lane, arrival, answered)
            try:
                loaded, decode_ms, ticket = self._admit(request, client_key, on_status, held, arrival)
            finally:
                self._leave_gate(lane)
            result = ticket.wait(RESULT_TIMEOUT)
        # Only models that answered are noted: the dict holds at most one number per model the client used.
        self._note_answer(request.model, arrival, answered)
        decode_ms += result.decode_ms
        spec = loaded.spec
        scores = scores_from_outputs(result.output[None, :], spec)[0]
        return {
            "id": request.id,
            "model": spec.name,
            "version": spec.version,
            "runtime": loaded.runtime.name,
            "labels": _top_labels(scores, spec.labels, request.top_k),
            "timing": {
                "decode_ms": round(decode_ms, 3),
                "queue_ms": round(result.queue_ms, 3),
                "inference_ms": round(result.inference_ms, 3),
                "total_ms": round((time.perf_counter() - started) * 1000.0, 3),
                "batch_size": result.batch_size,
            },
            # Send no faster than this, and frames will not queue or be superseded.
            "hint": {"interval_ms": loaded.batcher.hint_interval_ms()},
        }

    def _admit(self, request: FrameRequest, client_key, on_status, held: ExitStack, arrival=None):
        """Queue the frame for its model: (model, decode ms so far, ticket).

        A small image is queued undecoded (`DeferredInput`) and decoded with
        its batch, its decode memory held in `held` until it is answered; a
        large one is decoded first, on a native thread of its own.
        """
        run = self.concurrency.run_blocking
        image = request.image
        if isinstance(image, (bytes, bytearray)) or (isinstance(image, str) and len(image) <= INLINE_BASE64_CHARS):
            # Microseconds of work: a native-thread hop would cost more than it saves.
            data = payload_bytes(image, self.max_frame_bytes)
        else:
            data = run(payload_bytes, image, self.max_frame_bytes)
        decode_ms, item, decoded_for = 0.0, None, None
        for attempt in range(3):
            loaded = self.registry.acquire(request.model, on_status)
            spec = loaded.spec
            if decoded_for != (spec.height, spec.width, spec.channels, spec.preprocess):
                item, ms = self._prepare(data, spec, held, _decodes_with_batch(loaded.batcher))
                decode_ms += ms
                decoded_for = (spec.height, spec.width, spec.channels, spec.preprocess)
            try:
                ticket = loaded.batcher.submit(client_key, item, arrival)
                break
            except BatcherClosed:
                # The model was swapped for a new version or unloaded between
                # acquire and submit: take the current one (decoding again
                # only if its input differs).
                if attempt == 2:
                    raise
        return loaded, decode_ms, ticket

    def _prepare(self, data: bytes, spec, held: ExitStack, with_batch: bool):
        """(model input or `DeferredInput`, decode ms spent here), its peak memory reserved.

        The header is read on the calling thread (microseconds), so the wait
        for budget never holds a native thread."""
        image = probe_image(data, self.max_image_pixels, (spec.height, spec.width, spec.channels))
        reservation = self.decode_budget.reserve(decode_cost(image, (spec.height, spec.width)))
        if with_batch and image.width * image.height <= BATCH_DECODE_PIXELS:
            held.enter_context(reservation)
            return DeferredInput(model_input, image, spec), 0.0
        with reservation:
            decode_started = time.perf_counter()
            tensor = self.concurrency.run_blocking(model_input, image, spec)
            return tensor, (time.perf_counter() - decode_started) * 1000.0

    def list_models(self, grant: Grant = OPEN) -> dict:
        """The store's models that `grant` may use.

        At most LISTINGS_AT_ONCE run at once, `overloaded` past that: while
        the store stalls each listing waits for its timeouts, and one client
        asking again and again would otherwise hold a thread (or green
        thread) per ask. A bound of their own, so that listings never take
        the frames' places (`MAX_WAITING_FRAMES`).
        """
        with self._counted("listings", LISTINGS_AT_ONCE,
                           "The server is listing the model store for too many requests; try again shortly."):
            models = self.concurrency.run_blocking(self.registry.list_models)
        return {"models": [m for m in models if grant.allows(m["name"])]}

    def describe(self, name: str) -> dict:
        if not is_valid_model_name(name):
            raise UnknownModel.named(name)
        details = self.registry.describe(name)
        # A model served from its int8 file: what `publish --quantize int8` measured.
        int8 = getattr(self.registry.acquire(name).runtime, "int8", None)
        if int8 is not None:
            details["int8"] = int8
        return details

    def start(self, preload) -> None:
        """Load the default, preloaded and warm models in the background."""
        self.registry.start([self.default_model, *preload])

    def readiness(self) -> tuple[bool, dict]:
        """Ready when the default model is loaded and can serve.

        With no default model, ready once the store has answered or some
        model is loaded. A store outage alone does not make a server with
        loaded models unready (they keep serving); it is reported in the body.
        After SIGTERM the server is never ready (`shutting_down`), so a load
        balancer stops sending clients to a process that refuses them.
        """
        store = self.registry.store.status()
        if self.draining:
            return False, {"shutting_down": True, "store": store}
        if not self.default_model:
            return bool(store.get("reachable")) or self.registry.any_loaded(), {"store": store}
        state = self.registry.state_of(self.default_model)
        return state["loaded"], {"store": store, "default_model": {"name": self.default_model, **state}}


__all__ = ["PredictionService", "FrameRequest", "ModelUnavailable", "ServingError", "safe_frame_id"]
