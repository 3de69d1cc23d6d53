// Webcam capture page: streams camera frames to the server over Socket.IO
// and shows the labels that come back.
//
// Frames are centre-cropped to the model's aspect ratio and scaled to its
// input size in the browser (the same rule as the server's resize, so the
// server's own crop and resize are then no-ops), JPEG-encoded, and sent as
// binary attachments. Pacing: the next frame leaves when the previous answer
// arrived, no faster than the target fps nor than the server's hint.
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const ui = {
    model: $("model"), fps: $("fps"), start: $("start"), stop: $("stop"), message: $("message"),
    video: $("video"), canvas: $("frame"), connection: $("connection"), status: $("model-status"),
    statFps: $("stat-fps"), statRtt: $("stat-rtt"), labels: $("labels"), drop: $("drop"), file: $("file"),
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
  };

  const state = {
    model: null, input: null, stream: null, inFlight: null, seq: 0, hintMs: 0,
    lastSent: 0, answers: [], running: false,
  };

  function say(text, kind = "error") {
    ui.message.textContent = text;
    ui.message.className = `message ${kind}`;
    ui.message.hidden = !text;
  }

  // --- the socket -------------------------------------------------------
  // With access control on, open /capture?token=...: it goes to Socket.IO
  // as `auth` and to the HTTP API as a bearer token.
  const token = new URLSearchParams(location.search).get("token");
  const authHeaders = token ? { Authorization: `Bearer ${token}` } : {};
  const socket = io({ transports: ["websocket", "polling"], reconnection: true, auth: token ? { token } : undefined });
  socket.on("connect", () => { ui.connection.textContent = "connected"; });
  socket.on("disconnect", () => { ui.connection.textContent = "reconnecting…"; state.inFlight = null; });
  socket.io.on("reconnect_attempt", (n) => { ui.connection.textContent = `reconnecting… (attempt ${n})`; });
  socket.on("connect_error", (err) => { ui.connection.textContent = `cannot connect: ${err.message}`; });

  socket.on("model_status", (s) => {
    if (s.model !== state.model) return;
    const pct = s.state === "downloading" ? ` ${Math.round(s.progress * 100)}%` : "";
    ui.status.textContent = `${s.state}${pct}${s.version ? ` (version ${s.version})` : ""}`;
    if (s.state === "failed" && s.message) say(s.message);
  });

  socket.on("label", (result) => {
    settle(result.id);
    ui.status.textContent = `ready · ${result.runtime} · version ${result.version}`;
    if (result.hint && result.hint.interval_ms) state.hintMs = result.hint.interval_ms;
    showLabels(result.labels);
    if (ui.message.classList.contains("error")) say("");
  });

  socket.on("error", (err) => {
    settle(err.id);
    if (err.code === "superseded") return;  // a newer frame took its place
    if (err.code === "rate_limited" || err.code === "overloaded") state.hintMs = Math.max(state.hintMs * 2, 200);
    say(`${ERRORS[err.code] || "Error"} ${err.message || ""}`.trim());
  });

  function settle(id) {
    if (!state.inFlight || state.inFlight.id !== id) return;
    const now = performance.now();
    ui.statRtt.textContent = `${Math.round(now - state.inFlight.sentAt)} ms`;
    state.answers.push(now);
    state.answers = state.answers.filter((t) => now - t < 2000);
    const span = (now - state.answers[0]) / 1000;  // answers per second over the last 2 s
    if (state.answers.length > 1 && span > 0) ui.statFps.textContent = ((state.answers.length - 1) / span).toFixed(1);
    state.inFlight = null;
  }

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

  // --- models -----------------------------------------------------------
  async function loadModels() {
    const wanted = new URLSearchParams(location.search).get("model");
    const response = await fetch("/api/models", { headers: authHeaders });
    const { models } = await response.json();
    ui.model.replaceChildren(...models.map((m) => new Option(m.name, m.name)));
    if (wanted && models.some((m) => m.name === wanted)) ui.model.value = wanted;
    await selectModel(ui.model.value);
  }

  async function selectModel(name) {
    state.model = name;
    state.input = null;
    ui.status.textContent = "loading…";
    const response = await fetch(`/api/models/${encodeURIComponent(name)}`, { headers: authHeaders });
    const body = await response.json();
    if (!response.ok) {
      ui.status.textContent = "unavailable";
      say(`${ERRORS[body.error.code] || "Error"} ${body.error.message}`);
      return;
    }
    state.input = body.input;
    ui.status.textContent = `ready · ${body.runtime} · version ${body.version}`;
  }

  ui.model.addEventListener("change", () => selectModel(ui.model.value));

  // --- camera -------------------------------------------------------------
  async function startCamera() {
    say("");
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      say("This browser cannot use a camera here (it needs a recent browser, and HTTPS or localhost). "
        + "You can still drop an image below.");
      return;
    }
    try {
      state.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    } catch (err) {
      if (err.name === "NotAllowedError" || err.name === "SecurityError") {
        say("Camera access was denied. Allow the camera in the browser's site settings, or drop an image below.");
      } else if (err.name === "NotFoundError" || err.name === "OverconstrainedError") {
        say("No camera was found. Connect one, or drop an image below.");
      } else {
        say(`The camera could not be started (${err.name}). You can drop an image below.`);
      }
      return;
    }
    ui.video.srcObject = state.stream;
    await ui.video.play();
    state.running = true;
    ui.start.hidden = true;
    ui.stop.hidden = false;
    requestAnimationFrame(pump);
  }

  function stopCamera() {
    state.running = false;
    if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
    state.stream = null;
    ui.start.hidden = false;
    ui.stop.hidden = true;
  }

  // Centre crop to the model's aspect ratio, scaled to its input size.
  function drawFrame(source, sw, sh) {
    const { width, height } = state.input;
    const canvas = ui.canvas;
    canvas.width = width;
    canvas.height = height;
    let cw = sw, ch = sh;
    if (sw * height > sh * width) cw = Math.round(sh * width / height);
    else ch = Math.round(sw * height / width);
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(source, (sw - cw) >> 1, (sh - ch) >> 1, cw, ch, 0, 0, width, height);
    return canvas;
  }

  function send(buffer) {
    state.seq += 1;
    state.inFlight = { id: state.seq, sentAt: performance.now() };
    state.lastSent = state.inFlight.sentAt;
    socket.emit("frame", { model: state.model, image: buffer, id: state.seq, top_k: 5 });
  }

  function pump() {
    if (!state.running) return;
    requestAnimationFrame(pump);
    const now = performance.now();
    if (state.inFlight && now - state.inFlight.sentAt > 5000) state.inFlight = null;  // lost: move on
    const fps = Math.max(1, Math.min(60, Number(ui.fps.value) || 15));
    const interval = Math.max(1000 / fps, state.hintMs);
    if (state.inFlight || !state.input || !socket.connected || now - state.lastSent < interval) return;
    if (ui.video.readyState < 2 || !ui.video.videoWidth) return;
    state.inFlight = { id: -1, sentAt: now };  // reserve while encoding
    drawFrame(ui.video, ui.video.videoWidth, ui.video.videoHeight).toBlob(async (blob) => {
      if (!blob) { state.inFlight = null; return; }
      send(await blob.arrayBuffer());
    }, "image/jpeg", 0.85);
  }

  ui.start.addEventListener("click", startCamera);
  ui.stop.addEventListener("click", stopCamera);

  // --- upload / drag and drop fallback -----------------------------------
  async function sendFile(file) {
    if (!file) return;
    say("");
    send(await file.arrayBuffer());
  }
  ui.file.addEventListener("change", () => sendFile(ui.file.files[0]));
  ui.drop.addEventListener("dragover", (e) => { e.preventDefault(); ui.drop.classList.add("over"); });
  ui.drop.addEventListener("dragleave", () => ui.drop.classList.remove("over"));
  ui.drop.addEventListener("drop", (e) => {
    e.preventDefault();
    ui.drop.classList.remove("over");
    sendFile(e.dataTransfer.files[0]);
  });

  loadModels().catch((err) => say(`Could not list the models: ${err.message}`));
})();
