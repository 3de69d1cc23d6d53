"""Access per project: which token may use which models.

`PROJECT_TOKENS` maps tokens to model names or prefixes ending in `*`
(`{"token-a": ["shapes", "projA-*"]}`); `ADMIN_TOKEN` may use everything,
including `/dashboard`, `/metrics` and the `monitor` room. With neither set,
everything is open (the demo). Tokens are compared in constant time
(`hmac.compare_digest`, against every configured token) and never logged.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

from ..errors import Unauthorized


@dataclass(frozen=True)
class Grant:
    admin: bool
    patterns: tuple[str, ...] = ()

    def allows(self, model: str) -> bool:
        if self.admin:
            return True
        return any(model == p or (p.endswith("*") and model.startswith(p[:-1])) for p in self.patterns)

    def require(self, model: str) -> None:
        """Raise `Unauthorized` unless this grant may use `model`."""
        if not self.allows(model):
            raise Unauthorized(f"This token may not use model '{model}'.")


OPEN = Grant(admin=True)


class AccessPolicy:
    def __init__(self, project_tokens: str | dict | None, admin_token: str | None):
        if isinstance(project_tokens, str):
            try:
                project_tokens = json.loads(project_tokens) if project_tokens.strip() else {}
            except ValueError as exc:
                raise ValueError(f"PROJECT_TOKENS is not valid JSON: {exc.msg}") from None
        project_tokens = project_tokens or {}
        if not isinstance(project_tokens, dict) or not all(
                isinstance(k, str) and k and isinstance(v, list) and all(isinstance(p, str) for p in v)
                for k, v in project_tokens.items()):
            raise ValueError('PROJECT_TOKENS must map tokens to lists of model names: {"token": ["model", "prefix-*"]}')
        self._grants = [(token.encode(), Grant(False, tuple(patterns))) for token, patterns in project_tokens.items()]
        if admin_token:
            self._grants.append((admin_token.encode(), Grant(True)))
        self.enabled = bool(self._grants)

    def identify(self, token) -> Grant | None:
        """The grant for `token`; `OPEN` when access control is off; None if refused."""
        if not self.enabled:
            return OPEN
        if not isinstance(token, str) or not token:
            return None
        candidate = token.encode()
        found = None
        for secret, grant in self._grants:  # no early exit: the time does not depend on which matched
            if hmac.compare_digest(candidate, secret):
                found = grant
        return found

    def grant_for_request(self, authorization: str | None, query_token: str | None) -> Grant:
        """The grant of an HTTP request: its `Authorization: Bearer ...` header,
        else its `?token=` (pages opened in a browser cannot set headers).
        Raises `Unauthorized` when refused."""
        header = authorization or ""
        token = header[7:].strip() if header[:7].lower() == "bearer " else query_token
        grant = self.identify(token)
        if grant is None:
            raise Unauthorized("A valid token is required (Authorization: Bearer ...).")
        return grant
