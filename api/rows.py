"""A tenant's rows as the resource routes answer with them: one row or a 404, a page of rows.

Written once so that every resource says "not found" and pages its list the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from application.errors import not_found
from service.pagination import Page

Row = TypeVar("Row")
ListBody = TypeVar("ListBody", bound=BaseModel)


def tenant_row(
    get: Callable[..., Row | None],
    what: str,
    session: Session,
    tenant_id: str,
    row_id: str,
    **options: Any,
) -> Row:
    """``get(session, tenant_id, row_id, **options)``, or a 404 naming ``what`` and the id.

    The service's getters read another tenant's row as absent, so it gets the same 404.
    """
    row = get(session, tenant_id, row_id, **options)
    if row is None:
        raise not_found(what, row_id)
    return row


def page_body(body: type[ListBody], page: Page[Row], render: Callable[[Row], Any]) -> ListBody:
    """A list answer: each row of the page rendered, and the cursor to the next page."""
    return body(items=[render(row) for row in page.items], next_cursor=page.next_cursor)
