// Webcam capture page, built on /predictor.js: the camera (or a dropped
// image) goes to the server and the labels come back over the video.
// Resizing, pacing, hints and reconnection are the module's; this file is
// only the page: camera choice, the figures, the messages.
import { Predictor } from "/predictor.js";

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), fps: $("fps"), start: $("start"), stop: $("stop"), switchCamera: $("switch"),
  message: $("message"), video: $("video"), still: $("still"), placeholder: $("placeholder"),
  connection: $("connection"), status: $("model-status"), statFps: $("stat-fps"), statRtt: $("stat-rtt"),
  labels: $("labels"), drop: $("drop"), file: $("file"),
};

const ERRORS = {
  bad_request: "The server could not read that frame.",
  bad_image: "That is not an image the server can read (JPEG, PNG, WebP, GIF or BMP).",
  too_large: "That image is too large for the server.",
  unknown_model: "There is no such model on the server.",
  model_unavailable: "The model cannot be used right now.",
  rate_limited: "Sending too fast; slowing down.",
  overloaded: "The server is busy; slowing down.",
  unauthorized: "You are not allowed to use this model.",
  internal: "The server failed on that frame.",
  timeout: "The server did not answer in time.",
};

function say(text, kind = "error") {
  ui.message.textContent = text;
  ui.message.className = `message ${kind}`;
  ui.message.hidden = !text;
}

const explain = (err) => `${ERRORS[err.code] || "Error"} ${err.message || ""}`.trim();

// With access control on, open /capture?token=...
const params = new URLSearchParams(location.search);
const predictor = new Predictor(location.origin, { token: params.get("token"), topK: 5 });

predictor.on("connect", () => { ui.connection.textContent = "connected"; });
predictor.on("disconnect", () => { ui.connection.textContent = "reconnecting…"; });
predictor.on("error", (err) => {
  if (err.code === "connect_error" || err.code === "unauthorized") ui.connection.textContent = "cannot connect";
  say(explain(err));
});
predictor.on("status", (s) => {
  const pct = s.state === "downloading" && s.progress != null ? ` ${Math.round(s.progress * 100)}%` : "";
  ui.status.dataset.state = s.state;
  if (s.state === "loaded" || s.state === "updated") {
    ui.status.textContent = `ready · ${s.runtime || "…"} · version ${s.version}`;
  } else {
    ui.status.textContent = `${s.state}${pct}${s.version ? ` (version ${s.version})` : ""}`;
  }
  if ((s.state === "failed" || s.state === "unavailable") && s.message) say(explain(s));
});

function showLabels(labels) {
  ui.labels.replaceChildren(...labels.map(({ label, score }) => {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.setProperty("--score", score.toFixed(4));
    const value = document.createElement("span");
    value.className = "score";
    value.textContent = `${(score * 100).toFixed(1)}%`;
    item.append(name, bar, value);
    return item;
  }));
}

function showAnswer(label, { roundTripMs, fps } = {}) {
  showLabels(label.labels);
  if (roundTripMs != null) ui.statRtt.textContent = `${Math.round(roundTripMs)} ms`;
  if (fps) ui.statFps.textContent = fps.toFixed(1);
  if (ui.message.classList.contains("error")) say("");
}

// --- models -----------------------------------------------------------
async function loadModels() {
  const models = await predictor.models();
  ui.model.replaceChildren(...models.map((m) => new Option(m.name, m.name)));
  const wanted = params.get("model");
  if (wanted && models.some((m) => m.name === wanted)) ui.model.value = wanted;
  predictor.model = ui.model.value;
}
ui.model.addEventListener("change", () => { predictor.model = ui.model.value; ui.labels.replaceChildren(); });

// --- camera -----------------------------------------------------------
const camera = { stream: null, stop: null, devices: [], deviceId: null };

async function startCamera(deviceId = null) {
  say("");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    say("This browser cannot use a camera here (it needs a recent browser, and HTTPS or localhost). "
      + "You can still choose or drop an image.");
    return;
  }
  stopCamera();
  // The back camera by default on phones (it looks at things); laptops ignore it.
  const video = deviceId ? { deviceId: { exact: deviceId } } : { facingMode: { ideal: "environment" } };
  try {
    camera.stream = await navigator.mediaDevices.getUserMedia({
      video: { ...video, width: { ideal: 640 }, height: { ideal: 480 } }, audio: false,
    });
  } catch (err) {
    if (err.name === "NotAllowedError" || err.name === "SecurityError") {
      say("Camera access was denied. Allow the camera in the browser's site settings, or choose an image.");
    } else if (err.name === "NotFoundError" || err.name === "OverconstrainedError") {
      say("No camera was found. Connect one, or choose an image.");
    } else {
      say(`The camera could not be started (${err.name}). You can choose an image instead.`);
    }
    return;
  }
  camera.deviceId = camera.stream.getVideoTracks()[0]?.getSettings().deviceId || deviceId;
  ui.still.hidden = true;
  ui.placeholder.hidden = true;
  ui.video.hidden = false;
  ui.video.srcObject = camera.stream;
  await ui.video.play();
  ui.start.hidden = true;
  ui.stop.hidden = false;
  camera.stop = predictor.stream(ui.video, showAnswer, { fps: () => ui.fps.value });
  // Device labels and the full list are only available once permission is granted.
  camera.devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
  ui.switchCamera.hidden = camera.devices.length < 2;
  const now = camera.stream.getVideoTracks()[0]?.label;
  ui.switchCamera.title = `${now ? `Now: ${now}. ` : ""}Use the next camera.`;
}

function stopCamera() {
  if (camera.stop) camera.stop();
  if (camera.stream) {  // the camera was on: back to the placeholder
    camera.stream.getTracks().forEach((t) => t.stop());
    ui.video.hidden = true;
    ui.placeholder.hidden = false;
  }
  camera.stream = camera.stop = null;
  ui.start.hidden = false;
  ui.stop.hidden = true;
}

ui.start.addEventListener("click", () => startCamera());
ui.stop.addEventListener("click", stopCamera);
ui.switchCamera.addEventListener("click", () => {
  const index = camera.devices.findIndex((d) => d.deviceId === camera.deviceId);
  const next = camera.devices[(index + 1) % camera.devices.length];
  if (next) startCamera(next.deviceId);
});

// --- an image instead: chosen or dropped --------------------------------
async function sendFile(file) {
  if (!file) return;
  stopCamera();
  say("");
  ui.video.hidden = true;
  ui.placeholder.hidden = true;
  if (ui.still.src) URL.revokeObjectURL(ui.still.src);
  ui.still.src = URL.createObjectURL(file);
  ui.still.onerror = () => { ui.still.hidden = true; ui.placeholder.hidden = false; };
  ui.still.hidden = false;
  const sentAt = performance.now();
  try {
    showAnswer(await predictor.predict(file), { roundTripMs: performance.now() - sentAt });
  } catch (err) {
    ui.labels.replaceChildren();
    say(explain(err));
  }
}
ui.file.addEventListener("change", () => { sendFile(ui.file.files[0]); ui.file.value = ""; });
ui.drop.addEventListener("dragover", (e) => { e.preventDefault(); ui.drop.classList.add("over"); });
ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("over"));
ui.drop.addEventListener("drop", (e) => {
  e.preventDefault();
  ui.drop.classList.remove("over");
  sendFile(e.dataTransfer.files[0]);
});

loadModels().catch((err) => say(`Could not list the models: ${err.message}`));
