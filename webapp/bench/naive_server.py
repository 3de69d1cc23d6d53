"""The original design, for comparison: the baseline the benchmark beats.

One Flask-SocketIO handler per frame that decodes the image, resizes it with
scikit-image (anti-aliased, float64), and calls `model.predict` on it; the
Keras model is loaded when a client connects. Nothing is batched, nothing
runs off the event loop. Only the benchmark runs this.

`python -m webapp.bench.naive_server --port P --model PATH --async-mode M`
"""

from __future__ import annotations

import argparse
import base64
import io
import os


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--async-mode", default="eventlet")
    args = parser.parse_args(argv)
    if args.async_mode == "eventlet":
        import eventlet

        eventlet.monkey_patch(thread=False)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    from flask import Flask, request
    from flask_socketio import SocketIO, emit
    from PIL import Image
    from skimage.transform import resize

    app = Flask(__name__)
    socketio = SocketIO(app, async_mode=args.async_mode, max_http_buffer_size=16 * 1024 * 1024)
    models = {}

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @socketio.on("connect")
    def connect(auth=None):
        import keras

        models[request.sid] = keras.models.load_model(args.model, compile=False)

    @socketio.on("disconnect")
    def disconnect(*_):
        models.pop(request.sid, None)

    @socketio.on("frame")
    def frame(data):
        model = models[request.sid]
        image = data["image"]
        raw = image if isinstance(image, bytes) else base64.b64decode(image.split(",")[-1])
        pixels = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        size = model.input_shape[1:3]
        x = resize(pixels, size, anti_aliasing=True) * 2.0 - 1.0
        scores = model.predict(x[None], verbose=0)[0]
        best = int(np.argmax(scores))
        result = {"id": data.get("id"), "labels": [{"label": str(best), "score": float(scores[best])}]}
        emit("label", result)
        return result

    if args.async_mode == "eventlet":
        socketio.run(app, host="127.0.0.1", port=args.port, log_output=False)
    else:
        socketio.run(app, host="127.0.0.1", port=args.port, allow_unsafe_werkzeug=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
