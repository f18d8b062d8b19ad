"""How a create route answers a replayed Idempotency-Key: the earlier request's row with 200
(the checks and the race handling are ``application.idempotency``'s)."""

from __future__ import annotations

from fastapi import Response

from application.idempotency import Row, same_request


def replay(existing: Row, digest: str, response: Response, what: str) -> Row:
    """The row an earlier request with this key created, answered with 200; a 409 when the key
    was used for another request."""
    row = same_request(existing, digest, what)
    response.status_code = 200
    return row
