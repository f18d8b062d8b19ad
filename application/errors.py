"""A refusal the caller can act on: what the API sends back as its error body, with this status.

Raised by the application layer and by the routes; `api.errors` renders it in our shape or, under
/v1, in OpenAI's. Never a stack trace.
"""

from __future__ import annotations

import math


class RequestError(Exception):
    """The status, a stable code, a message for people, and the request field at fault."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers


def retry_after(wait_s: float) -> dict[str, str]:
    """The header that tells a client how long to wait before it tries again (whole seconds)."""
    return {"Retry-After": str(max(1, math.ceil(wait_s)))}


def not_found(what: str, ident: str) -> RequestError:
    return RequestError(404, "not_found", f"{what} {ident!r} not found")
