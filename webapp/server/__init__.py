"""The server process: what any transport and any model share.

* `async_mode`: spawn / sleep / run-blocking for eventlet or threading;
* `lifecycle`: SIGTERM drain; `messaging`: the Redis control channel;
* `memory`: the container's limit and the budgets derived from it;
* `metrics`, `status_board`, `monitor_feed`: what operators see;
* `connections`: how many sessions, how long to handshake;
* `library_internals` and one `*_internals` module per library touched
  (eventlet, simple-websocket, Engine.IO, python-socketio), checked at
  start-up.

Nothing is imported here.
"""
