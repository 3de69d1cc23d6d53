"""A frame's path, from payload to label, the same for every transport.

* `service`: `PredictionService.predict`, one frame in, one label out
  (parsing the payload, admission, per-client latest-frame-wins);
* `access`: which token may use which models;
* `url_fetch`: `{"url": ...}` images, without server-side request forgery;
* `images`: bytes -> pixels -> the model's input (no larger than it needs);
* `decode_budget`: decoded pixels in flight, bounded server-wide;
* `batching`: one queue per loaded model; waiting frames share one call.

Nothing is imported here.
"""
