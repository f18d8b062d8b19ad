"""A refusal the caller can act on: what the API sends back as its error body, with this status.

Raised by the application layer and by the routes; `api.errors` renders it in our shape or, under
/v1, in OpenAI's. Never a stack trace.
"""

from __future__ import annotations


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


def not_found(what: str, ident: str) -> RequestError:
    return RequestError(404, "not_found", f"{what} {ident!r} not found")
