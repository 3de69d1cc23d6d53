"""Several server processes as one: the Redis control channel.

With `MESSAGE_QUEUE=redis://...` Flask-SocketIO already relays emits between
processes (so `monitor` rooms see predictions from every process). This
module adds the one thing Socket.IO's queue does not carry: instructions to
the servers themselves. `python -m webapp notify --model NAME` (and `publish`)
posts "revalidate NAME" here, and every process checks the store for a new
version at once instead of waiting for `MODEL_REFRESH_SECONDS`.

If Redis goes away the listener logs it, retries with back-off, and the
servers carry on: models are still revalidated on their own schedule.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger(__name__)

CONTROL_CHANNEL = "webapp:control"


def notify_revalidate(queue_url: str, model: str) -> int:
    """Tell every server process to revalidate `model`; returns how many listened."""
    import redis

    client = redis.Redis.from_url(queue_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        return int(client.publish(CONTROL_CHANNEL, json.dumps({"action": "revalidate", "model": model})))
    finally:
        client.close()


class ControlListener:
    """Receives control messages in a background task and acts on them."""

    def __init__(self, queue_url: str, registry, concurrency):
        self._url = queue_url
        self._registry = registry
        self._concurrency = concurrency

    def start(self) -> None:
        self._concurrency.spawn(self._run)

    def _run(self) -> None:
        import redis

        backoff = 1.0
        while True:
            try:
                client = redis.Redis.from_url(self._url, socket_connect_timeout=5, health_check_interval=30)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(CONTROL_CHANNEL)
                log.info("listening for model notifications on %s", CONTROL_CHANNEL)
                backoff = 1.0
                while True:
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._handle(message.get("data"))
            except Exception as exc:  # Redis down: degrade to periodic checks
                log.warning("model notifications unavailable (%s: %s); retrying in %.0fs",
                            type(exc).__name__, exc, backoff)
                self._concurrency.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def _handle(self, raw) -> None:
        try:
            message = json.loads(raw)
        except (TypeError, ValueError):
            log.warning("ignored a malformed control message")
            return
        if message.get("action") == "revalidate" and isinstance(message.get("model"), str):
            log.info("notified: revalidating model %s", message["model"])
            self._registry.revalidate(message["model"])
