"""What can go wrong, as the server names it (`error` answers) plus two client-side codes."""

from __future__ import annotations

#: Codes the server sends in `error` answers (its README, "Socket.IO protocol").
SERVER_CODES = ("bad_request", "bad_image", "too_large", "unknown_model", "model_unavailable",
                "superseded", "rate_limited", "overloaded", "unauthorized", "internal")
#: Codes this client gives on its own; a server never sends them.
CLIENT_CODES = ("timeout", "disconnected")


class WebappClientError(Exception):
    """Base of this package's errors."""


class ConnectError(WebappClientError):
    """The server could not be reached, or refused the connection.

    `reason` is the server's refusal (e.g. "unauthorized") or the transport's error.
    """

    def __init__(self, url: str, reason: str):
        super().__init__(f"cannot connect to {url}: {reason}")
        self.url = url
        self.reason = reason


class PredictionError(WebappClientError):
    """An `error` answer (`code`, `message`, the frame's `id`), or no answer (`timeout`, `disconnected`)."""

    def __init__(self, code: str, message: str, id=None):  # noqa: A002 - the protocol's field name
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.id = id

    @classmethod
    def from_answer(cls, answer: dict) -> "PredictionError":
        return cls(str(answer.get("code")), str(answer.get("message", "")), answer.get("id"))

    def to_dict(self) -> dict:
        """The same shape as the server's `error` object."""
        return {"id": self.id, "code": self.code, "message": self.message}

    def __repr__(self) -> str:
        return f"PredictionError(code={self.code!r}, message={self.message!r}, id={self.id!r})"
