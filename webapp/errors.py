"""The errors a client can see, defined once.

Every failure that reaches a client is a `ServingError` subclass with a stable
`code` (part of the public protocol: Socket.IO `error` events and HTTP
`{"error": {"code", "message"}}` bodies both use it) and the HTTP status that
fits it. Transports map these once; nothing else decides status codes.
"""

from __future__ import annotations

import copy


class ServingError(Exception):
    """Base of the error tree. `message` is a human sentence."""

    code = "internal"
    http_status = 500

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def to_dict(self, frame_id=None) -> dict:
        return {"id": frame_id, "code": self.code, "message": self.message}

    def fresh(self) -> "ServingError":
        """The same error as a new object: no traceback, no chained errors.

        An error kept to answer later requests (a model that failed to load)
        is kept and raised as a fresh copy. Raising one object again and
        again would add each raise's stack to its traceback, and with the
        stack every local it holds (a frame's image), for as long as the
        error is kept.
        """
        return copy.copy(self)  # an exception's copy takes its args and attributes, not its traceback


class BadRequest(ServingError):
    code, http_status = "bad_request", 400


class BadImage(ServingError):
    code, http_status = "bad_image", 400


class TooLarge(ServingError):
    code, http_status = "too_large", 413


class UnknownModel(ServingError):
    code, http_status = "unknown_model", 404

    @classmethod
    def named(cls, name) -> "UnknownModel":
        """For a name the store does not have, or that cannot be a model (quoted, at most 80 characters)."""
        return cls(f"There is no model called {str(name)[:80]!r}.")


class ModelUnavailable(ServingError):
    code, http_status = "model_unavailable", 503


class BrokenVersion(ModelUnavailable):
    """A model version whose files cannot be served (not an outage): it is
    not fetched or loaded again until the store has another version."""


class Superseded(ServingError):
    code, http_status = "superseded", 409

    @classmethod
    def by_newer_frame(cls) -> "Superseded":
        return cls("A newer frame from this client replaced this one before it was processed.")


class RateLimited(ServingError):
    code, http_status = "rate_limited", 429


class Overloaded(ServingError):
    code, http_status = "overloaded", 503


class Unauthorized(ServingError):
    code, http_status = "unauthorized", 401


class NotFound(ServingError):
    """An HTTP API route that does not exist (a model that does not exist is `UnknownModel`)."""

    code, http_status = "not_found", 404


class MethodNotAllowed(ServingError):
    code, http_status = "method_not_allowed", 405


#: Every public error code, for documentation and tests.
ERROR_CODES = tuple(
    cls.code
    for cls in (
        BadRequest, BadImage, TooLarge, UnknownModel, ModelUnavailable,
        Superseded, RateLimited, Overloaded, Unauthorized, NotFound, MethodNotAllowed,
    )
)
