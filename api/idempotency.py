"""Idempotency-Key handling for every create route, written once.

A key stands for one request: the row created under it stores the request's hash. The same key
with the same request replays that row (200); with another request it is a 409. Two requests
racing with one key both try to insert; the unique constraint lets one win, and the loser
answers with the winner's row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from fastapi import Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from application.errors import RequestError


class KeyedRow(Protocol):
    request_hash: str | None


Row = TypeVar("Row", bound=KeyedRow)


def replay(existing: Row, digest: str, response: Response, what: str) -> Row:
    """The row an earlier request with this key created, if ``digest`` says it is the same."""
    if existing.request_hash != digest:
        raise RequestError(
            409,
            "idempotency_conflict",
            f"this Idempotency-Key was used for a different {what}",
            "Idempotency-Key",
        )
    response.status_code = 200
    return existing


def create_once(
    session: Session,
    key: str | None,
    insert: Callable[[], Row],
    find: Callable[[], Row | None],
) -> tuple[Row, bool]:
    """Run ``insert`` (which commits); when a concurrent request with the same key won the
    race, return its row instead. The flag says whether this call created the row."""
    try:
        return insert(), True
    except IntegrityError:
        session.rollback()
        if key is None:
            raise
        existing = find()
        if existing is None:
            raise
        return existing, False
