"""Idempotency-Key handling for every create, written once.

A key stands for one request: the row created under it stores the request's hash. The same key
with the same request replays that row; with another request it is a 409. Two requests racing
with one key both try to insert; the unique constraint lets one win, and the loser answers
with the winner's row. (How a replay is answered, e.g. 200 instead of 201, is the caller's
business.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from application.errors import RequestError


class KeyedRow(Protocol):
    request_hash: str | None


Row = TypeVar("Row", bound=KeyedRow)


def same_request(existing: Row, digest: str, what: str) -> Row:
    """The row an earlier request with this key created, if ``digest`` says it is the same
    request; a 409 naming the header otherwise."""
    if existing.request_hash != digest:
        raise RequestError(
            409,
            "idempotency_conflict",
            f"this Idempotency-Key was used for a different {what}",
            "Idempotency-Key",
        )
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
