// predictor.js: the prediction server's client for web front ends.
//
// An ES module with no build step, served by the server at /predictor.js
// (with CORS, so pages on any origin can import it):
//
//   import { Predictor } from "http://127.0.0.1:5000/predictor.js";
//   const predictor = new Predictor("http://127.0.0.1:5000", { model: "shapes" });
//   const label = await predictor.predict(canvasOrBlobOrImageOrVideo);
//   const stop = predictor.stream(video, (label) => show(label.labels), { fps: 15 });
//   predictor.on("error", (err) => console.warn(err.code, err.message));
//
// It owns what every front end otherwise re-implements: one Socket.IO
// connection with reconnection, frames resized in the browser to the model's
// input (centre crop to its aspect ratio, the same rule as the server's, so
// the server's own resize is a no-op and uploads stay small), pacing that
// follows the server's `hint.interval_ms` and backs off on `rate_limited` /
// `overloaded`, and `model_status` handling.
//
// The page's origin must be accepted by the server (`CORS_ORIGINS`) for the
// connection; the module itself is served to any origin, so a refused page
// gets a clear `connect_error` instead of an opaque failed import.

import { io } from "./predictor/socket.io.esm.js";

/** An `error` answer (server codes: see the README) or a client-side failure
 *  (`timeout`, `disconnected`, `busy`, `bad_image` for an unreadable source). */
export class PredictionError extends Error {
  constructor({ id = null, code = "internal", message = "", ...details } = {}) {
    super(message || code);
    this.name = "PredictionError";
    this.id = id;
    this.code = code;
    Object.assign(this, details);
  }
}

const EVENTS = ["status", "error", "connect", "disconnect"];
// Without the model's input size (it is known once the model has loaded),
// frames are scaled so their longer side is at most this.
const FALLBACK_MAX_SIDE = 640;
// Bounded: more concurrent predict() calls than this are refused at once.
const MAX_PENDING = 32;

export class Predictor {
  /**
   * @param {string} serverUrl e.g. "http://127.0.0.1:5000" (no trailing path)
   * @param {{model?: string, token?: string, topK?: number, timeoutMs?: number, quality?: number}} options
   */
  constructor(serverUrl, { model = null, token = null, topK = 5, timeoutMs = 30000, quality = 0.85 } = {}) {
    this.serverUrl = String(serverUrl || "").replace(/\/+$/, "");
    this.token = token;
    this.topK = topK;
    this.timeoutMs = timeoutMs;
    this.quality = quality;
    this._listeners = new Map(EVENTS.map((name) => [name, new Set()]));
    this._pending = new Map();
    this._waiting = 0;
    this._closed = false;
    this._seq = 0;
    this._model = null;
    this._input = null;  // {width, height, channels} of the current model, once known
    this.lastStatus = null;
    this.socket = io(this.serverUrl || undefined, {
      transports: ["websocket", "polling"],
      reconnection: true,
      auth: token ? { token } : undefined,
    });
    this.socket.on("connect", () => this._fire("connect", { id: this.socket.id }));
    this.socket.on("disconnect", (reason) => {
      // Answers to frames sent before the drop will not come: fail them now.
      for (const [, pending] of this._pending) pending.fail({ code: "disconnected", message: `Disconnected (${reason}).` });
      this._fire("disconnect", { reason });
      // A server that shuts down (a deploy, a scale-down) ends each session
      // itself; socket.io-client never reconnects from that on its own. Connect
      // again (to the next process behind the same address); from there the
      // client's own back-off retries until one answers.
      if (reason === "io server disconnect" && !this._closed) {
        setTimeout(() => { if (!this._closed && !this.socket.connected) this.socket.connect(); },
                   500 + Math.random() * 1000);
      }
    });
    this.socket.on("connect_error", (err) => {
      this._fire("error", new PredictionError({
        code: err.message === "unauthorized" ? "unauthorized" : "connect_error",
        message: `Cannot connect to ${this.serverUrl || "the server"}: ${err.message}`,
      }));
    });
    this.socket.on("model_status", (status) => {
      if (status.model !== this._model) return;
      this._setStatus(status);
      if (status.state === "updated") this._describe();  // a new version: its input size may differ
    });
    if (model) this.model = model;
  }

  /** The model frames go to; setting it fetches its details (and loads it). */
  get model() { return this._model; }

  set model(name) {
    if (name === this._model) return;
    this._model = name;
    this._input = null;
    this._describe();
  }

  /** The current model's input size once known, else null. */
  get input() { return this._input; }

  get connected() { return this.socket.connected; }

  /** Listen to "status" (model state), "error", "connect" or "disconnect"; returns an unsubscribe function. */
  on(event, fn) {
    const listeners = this._listeners.get(event);
    if (!listeners) throw new TypeError(`Unknown event ${event}; one of ${EVENTS.join(", ")}`);
    listeners.add(fn);
    return () => listeners.delete(fn);
  }

  /** The models this client may use (the server's `models` answer). */
  async models() {
    await this._connected();
    const answer = await this.socket.timeout(this.timeoutMs).emitWithAck("models", {});
    if (answer && answer.code) throw new PredictionError(answer);
    return answer.models;
  }

  /**
   * Labels for one image: a Blob (sent as is), an ImageBitmap, or an img,
   * canvas or video element (resized here to the model's input).
   * Resolves to the `label` object, rejects with a PredictionError.
   */
  async predict(source, { model = this._model, topK = this.topK } = {}) {
    const image = await this._encode(source);
    return this._send(image, model, topK);
  }

  /**
   * Streams a playing video element: one frame in flight at a time, no faster
   * than `fps` (a number, or a function read before each frame) nor than the
   * server's hint. `onLabel(label, {roundTripMs, fps})` gets every answer;
   * errors other than `superseded` go to the "error" listeners.
   * Returns a function that stops the stream.
   */
  stream(video, onLabel, { fps = 15, topK = this.topK } = {}) {
    let running = true;
    let timer = null;
    let inFlight = false;
    let lastSent = -Infinity;
    let hintMs = 0;
    let answered = [];  // answer times over the last 2 s, for the fps figure
    const targetFps = () => Math.max(0.1, Math.min(60, Number(typeof fps === "function" ? fps() : fps) || 15));

    const later = (ms) => { clearTimeout(timer); timer = setTimeout(tick, Math.max(5, ms)); };
    const tick = () => {
      if (this._closed) running = false;
      if (!running || inFlight) return;
      const interval = Math.max(1000 / targetFps(), hintMs);
      const wait = lastSent + interval - performance.now();
      if (wait > 0) return later(wait);
      if (!this.connected || video.readyState < 2 || !video.videoWidth) return later(100);
      inFlight = true;
      const sentAt = performance.now();
      lastSent = sentAt;
      this._encode(video)
        .then((image) => this._send(image, this._model, topK))
        .then((label) => {
          const now = performance.now();
          answered = answered.filter((t) => now - t < 2000).concat(now);
          const span = (now - answered[0]) / 1000;
          hintMs = (label.hint && label.hint.interval_ms) || 0;
          if (running) onLabel(label, { roundTripMs: now - sentAt, fps: span > 0 ? (answered.length - 1) / span : null });
        })
        .catch((err) => {
          if (err.code === "rate_limited" || err.code === "overloaded") hintMs = Math.min(Math.max(hintMs * 2, 200), 5000);
          if (running && err.code !== "superseded") this._fire("error", err);  // superseded: a newer frame took its place
        })
        .finally(() => { inFlight = false; if (running) tick(); });
    };
    tick();
    return () => { running = false; clearTimeout(timer); };
  }

  /** Disconnects for good; streams stop, waiting predictions reject. */
  close() { this._closed = true; this.socket.disconnect(); }

  // --- internals ----------------------------------------------------------

  _fire(event, value) {
    for (const fn of this._listeners.get(event)) {
      try { fn(value); } catch (err) { setTimeout(() => { throw err; }); }  // a listener's bug is its own
    }
  }

  _setStatus(status) {
    this.lastStatus = status;
    this._fire("status", status);
  }

  // The HTTP details call loads the model and tells its input size, so the
  // first frame is already resized and the page can show "loaded".
  async _describe() {
    const name = this._model;
    if (!name) return;
    this._setStatus({ model: name, state: "loading" });
    try {
      const response = await fetch(`${this.serverUrl}/api/models/${encodeURIComponent(name)}`, {
        headers: this.token ? { Authorization: `Bearer ${this.token}` } : {},
      });
      const body = await response.json();
      if (name !== this._model) return;  // another model was chosen meanwhile
      if (!response.ok) {
        this._setStatus({ model: name, state: "unavailable", code: body.error.code, message: body.error.message });
        return;
      }
      this._input = body.input;
      this._setStatus({ model: name, state: "loaded", version: body.version, runtime: body.runtime, input: body.input });
    } catch (err) {
      // e.g. this origin is not allowed for the HTTP API: frames still work, unresized.
      if (name === this._model) this._setStatus({ model: name, state: "unknown", message: err.message });
    }
  }

  _connected() {
    if (this.connected) return Promise.resolve();
    if (this._closed) return Promise.reject(new PredictionError({ code: "disconnected", message: "This predictor was closed." }));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => { off(); reject(new PredictionError({ code: "timeout", message: "Not connected to the server." })); }, this.timeoutMs);
      const off = this.on("connect", () => { clearTimeout(timer); off(); resolve(); });
    });
  }

  async _send(image, model, topK) {
    if (this._pending.size + this._waiting >= MAX_PENDING) {
      throw new PredictionError({ code: "busy", message: `More than ${MAX_PENDING} predictions are waiting for answers.` });
    }
    this._waiting += 1;  // counted against the bound while waiting for the connection too
    try { await this._connected(); } finally { this._waiting -= 1; }
    const id = ++this._seq;
    return new Promise((resolve, reject) => {
      const done = () => { clearTimeout(timer); this._pending.delete(id); };
      const pending = { fail: (error) => { done(); reject(new PredictionError({ id, ...error })); } };
      const timer = setTimeout(() => pending.fail({ code: "timeout", message: `No answer in ${this.timeoutMs} ms.` }), this.timeoutMs);
      this._pending.set(id, pending);
      this.socket.emit("frame", { model, image, id, top_k: topK }, (answer) => {
        if (!this._pending.has(id)) return;  // timed out or disconnected already
        done();
        if (answer && answer.code) { reject(new PredictionError(answer)); return; }
        if (answer.model === this._model && (!this.lastStatus || this.lastStatus.state !== "loaded"
            || this.lastStatus.version !== answer.version)) {
          this._setStatus({ model: answer.model, state: "loaded", version: answer.version, runtime: answer.runtime, input: this._input });
          if (!this._input) this._describe();
        }
        resolve(answer);
      });
    });
  }

  // Bytes to send for `source`: a Blob as is, anything drawable as a JPEG of
  // the model's input size (centre-cropped to its aspect ratio).
  async _encode(source) {
    if (source instanceof Blob) return source.arrayBuffer();
    if (source instanceof ArrayBuffer || ArrayBuffer.isView(source)) return source;
    if (typeof HTMLImageElement !== "undefined" && source instanceof HTMLImageElement) {
      try { await source.decode(); } catch { throw new PredictionError({ code: "bad_image", message: "The image element could not be decoded." }); }
    }
    const [sw, sh] = sizeOf(source);
    if (!sw || !sh) throw new PredictionError({ code: "bad_image", message: "The source has no pixels yet (not loaded or not playing)." });
    let width, height, cw = sw, ch = sh;
    if (this._input) {
      ({ width, height } = this._input);
      if (sw * height > sh * width) cw = Math.round(sh * width / height);
      else ch = Math.round(sw * height / width);
    } else {
      const scale = Math.min(1, FALLBACK_MAX_SIDE / Math.max(sw, sh));
      width = Math.max(1, Math.round(sw * scale));
      height = Math.max(1, Math.round(sh * scale));
    }
    const canvas = typeof OffscreenCanvas !== "undefined" ? new OffscreenCanvas(width, height)
      : Object.assign(document.createElement("canvas"), { width, height });
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(source, (sw - cw) >> 1, (sh - ch) >> 1, cw, ch, 0, 0, width, height);
    try {
      const blob = canvas.convertToBlob
        ? await canvas.convertToBlob({ type: "image/jpeg", quality: this.quality })
        : await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", this.quality));
      return await blob.arrayBuffer();
    } catch (err) {  // a cross-origin image without CORS taints the canvas
      throw new PredictionError({ code: "bad_image", message: `The source cannot be read: ${err.message}` });
    }
  }
}

function sizeOf(source) {
  if (typeof HTMLVideoElement !== "undefined" && source instanceof HTMLVideoElement) return [source.videoWidth, source.videoHeight];
  if (typeof HTMLImageElement !== "undefined" && source instanceof HTMLImageElement) return [source.naturalWidth, source.naturalHeight];
  if (typeof VideoFrame !== "undefined" && source instanceof VideoFrame) return [source.displayWidth, source.displayHeight];
  return [source.width, source.height];  // canvas, OffscreenCanvas, ImageBitmap
}

export default Predictor;
