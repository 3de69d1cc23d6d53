"""`webapp serve`: run the server in the configured async mode.

* eventlet (default): eventlet's own production WSGI server via
  `socketio.run`. gunicorn >= 26 dropped its eventlet worker, so gunicorn is
  not used in this mode.
* threading: gunicorn with one gthread worker (Socket.IO needs all of a
  client's requests in one process; add processes with a message queue,
  not gunicorn workers) and simple-websocket for websockets.
"""

from __future__ import annotations

import os


def register(sub) -> None:
    parser = sub.add_parser("serve", help="run the server (HOST, PORT, ASYNC_MODE from the environment)")
    parser.add_argument("--host", help="interface to bind (default: $HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default: $PORT or 5000)")
    parser.add_argument("--async-mode", choices=("eventlet", "threading"),
                        help="concurrency model (default: $ASYNC_MODE or eventlet)")
    parser.set_defaults(run=run)


def run(args) -> int:
    # Command-line flags win over the environment; the app reads the environment.
    if args.async_mode:
        os.environ["ASYNC_MODE"] = args.async_mode
    mode = (os.environ.get("ASYNC_MODE") or "eventlet").strip().lower()
    if mode == "eventlet":
        _patch_for_eventlet()

    from ..config import load_config

    overrides = {}
    if args.host:
        overrides["HOST"] = args.host
    if args.port:
        overrides["PORT"] = args.port
    settings = load_config(overrides)
    from ..server import library_internals

    # Here too, not only in create_app: gunicorn builds the app in its worker,
    # where a failure would read as "worker failed to boot".
    library_internals.check(settings["ASYNC_MODE"])
    if settings["ASYNC_MODE"] == "eventlet":
        _run_eventlet(overrides, settings)
    else:
        _run_gunicorn(overrides, settings)
    return 0


def _run_eventlet(overrides: dict, settings: dict) -> None:
    import logging

    from .. import create_app, socketio
    from ..server.eventlet_internals import terminate_chunked_input

    app = create_app(overrides)
    app.wsgi_app = terminate_chunked_input(app.wsgi_app)
    app.extensions["lifecycle"].install_signal_handler()
    logging.getLogger("webapp").info(
        "serving on http://%s:%d (eventlet)", settings["HOST"], settings["PORT"])
    socketio.run(app, host=settings["HOST"], port=int(settings["PORT"]), log_output=False)


def _patch_for_eventlet() -> None:
    """Make sockets and sleeps cooperative, but keep real OS threads.

    Model work runs in eventlet's native thread pool (`tpool`); TensorFlow and
    other native libraries use real threads and locks internally, which must
    not be replaced by green ones, hence `thread=False`.
    """
    import warnings

    with warnings.catch_warnings():
        # eventlet announces its own deprecation at import; we know (see README).
        warnings.simplefilter("ignore")
        import eventlet

    eventlet.monkey_patch(thread=False)
    from ..server.eventlet_internals import install

    install()


def _run_gunicorn(overrides: dict, settings: dict) -> None:
    from gunicorn.app.base import BaseApplication

    class _Server(BaseApplication):
        def load_config(self):
            self.cfg.set("bind", f"{settings['HOST']}:{settings['PORT']}")
            self.cfg.set("workers", 1)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", int(settings["THREADS"]))
            # Open websockets keep their thread busy; the worker heartbeat
            # still runs, so the default timeout is safe.
            self.cfg.set("graceful_timeout", 25)
            self.cfg.set("accesslog", None)
            # gunicorn's admin socket is shared per user; several servers on
            # one machine (tests, side-by-side deploys) would fight over it.
            self.cfg.set("control_socket_disable", True)
            self.cfg.set("loglevel", settings["LOG_LEVEL"].lower())

        def load(self):
            # Built in the worker, after the fork: background loader threads
            # started in the master would not survive it.
            from .. import create_app

            app = create_app(overrides)
            self.cfg.set("post_worker_init", lambda worker: _drain_on_sigterm(app, worker))
            return app

    _Server().run()


def _drain_on_sigterm(app, worker) -> None:
    """In the gthread worker: answer in-flight frames and close the sockets,
    then let gunicorn's own SIGTERM handling stop the worker."""
    import signal

    gunicorn_exit = worker.handle_exit
    app.extensions["lifecycle"].install_signal_handler(then=lambda: gunicorn_exit(signal.SIGTERM, None))
