"""Transports and pages: everything a client talks to.

* `socketio_events`: the Socket.IO events (`frame`, `models`, `monitor`);
  `attachment_limit` bounds the binary attachments an event may declare;
* `http_api`: `/api/...` (list, describe, predict), with `openapi`;
* `pages`: `/`, `/capture`, `/predictor.js`; `health`: `/healthz`, `/readyz`;
* `monitoring`: `/metrics`, `/dashboard`, `/api/status` (admin);
* `cors`: which browser origins may connect.

Each module registers itself with `init_app(app)`; nothing is imported here.
"""
