"""One error base for everything Opencode reports to a client.

Every failure a person can act on is an `OpencodeError` with a stable `code`, a message that says
what to do, optional `details`, and the HTTP status the logic layer answers with. Imports nothing
from the rest of Opencode.
"""

from __future__ import annotations

from typing import Any


class OpencodeError(Exception):
    """A failure with a stable code; the routes turn it into `{"error": {...}}`."""

    code: str = "internal_error"
    status: int = 500

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details: dict[str, Any] = details or {}


class BadRequest(OpencodeError):
    """The client sent something malformed or invalid."""

    code = "bad_request"
    status = 400


class Unauthorized(OpencodeError):
    code = "unauthorized"
    status = 401


class Forbidden(OpencodeError):
    code = "forbidden"
    status = 403


class NotFound(OpencodeError):
    code = "not_found"
    status = 404


class Conflict(OpencodeError):
    code = "conflict"
    status = 409


class PayloadTooLarge(OpencodeError):
    code = "payload_too_large"
    status = 413


class ProviderError(OpencodeError):
    """An LLM provider failed; `retryable` says whether trying again may help."""

    code = "provider_error"
    status = 502

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, code=code, details={"http_status": http_status} if http_status else None)
        self.http_status = http_status
        self.retryable = retryable
        self.retry_after = retry_after


class StoreUnavailable(OpencodeError):
    """The database cannot be written (locked, read-only, disk full); nothing was half-written."""

    code = "store_unavailable"
    status = 503


class BudgetExceeded(OpencodeError):
    code = "budget_exceeded"
    status = 409


class ContextExceeded(OpencodeError):
    """A message too long for the model's context on its own: sent, a server would refuse it or
    (Ollama) silently keep only its end."""

    code = "context_exceeded"
    status = 413
