"""What /infer and the OpenAI-compatible routes share: a tenant's adapter, loaded into the engine,
with every way that can fail turned into the API's error.

Runs in a worker thread (a cold load reads the store). The database session is closed before the
adapter loads, so a burst of cold requests cannot drain the connection pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import Request

from adalora_core.serving.cache import (
    AdapterCorrupt,
    AdapterIncompatible,
    AdapterNotFound,
    AdapterTooLarge,
    AdapterUnavailable,
)
from api.lookup_cache import TtlCache
from api.serving import AdapterRowFacts, StoreAdapterSource
from application.errors import RequestError, not_found
from service import adapters as adapter_rows

T = TypeVar("T")


def with_tenant_adapter(
    request: Request, tenant_id: str, adapter_id: str, use: Callable[[], T]
) -> T:
    """Check that ``adapter_id`` is the tenant's and servable, then call ``use`` (which loads it
    through the engine) with the row already read; engine errors become API errors."""
    sessions = request.app.state.sessions
    rows = _row_cache(request)
    cached = rows.get((tenant_id, adapter_id))
    if cached is not None:
        status, facts = cached
    else:
        with sessions() as session:
            row = adapter_rows.get_adapter(session, tenant_id, adapter_id)
            status = None if row is None else row.status
            facts = None if row is None else AdapterRowFacts.of(row)
        if status is not None and facts is not None and status != "corrupt":
            rows.put((tenant_id, adapter_id), (status, facts))
    if status is None or facts is None:
        raise not_found("adapter", adapter_id)
    if status == "corrupt":
        raise corrupt(adapter_id)
    try:
        with StoreAdapterSource.row_already_read(facts):
            return use()
    except AdapterNotFound:
        raise not_found("adapter", adapter_id) from None
    except AdapterCorrupt as exc:
        rows.pop((tenant_id, adapter_id))
        with sessions() as session:
            adapter_rows.mark_corrupt(session, adapter_id)
            session.commit()
        raise corrupt(adapter_id, exc.reason) from exc
    except AdapterIncompatible as exc:
        raise RequestError(409, "adapter_incompatible", str(exc)) from exc
    except AdapterTooLarge as exc:
        raise RequestError(503, "adapter_too_large", str(exc)) from exc
    except AdapterUnavailable as exc:
        raise RequestError(503, "adapter_unavailable", f"{exc}; retry shortly") from exc


def resident_tenant_adapter(
    request: Request, tenant_id: str, adapter_id: str, use: Callable[[], T | None]
) -> T | None:
    """The event loop's path: when this process read the tenant's adapter row recently (so it
    is the tenant's and servable) ``use`` may run at once, if it needs no I/O (it returns None
    when the adapter is not in memory). None: go through `with_tenant_adapter` in a thread."""
    if _row_cache(request).get((tenant_id, adapter_id)) is None:
        return None
    return use()


def _row_cache(request: Request) -> TtlCache[tuple[str, str], tuple[str, AdapterRowFacts]]:
    return request.app.state.adapter_row_cache


def corrupt(adapter_id: str, reason: str = "") -> RequestError:
    detail = f" ({reason})" if reason else ""
    return RequestError(
        409,
        "adapter_corrupt",
        f"adapter {adapter_id!r} failed its integrity check and cannot be served{detail}; "
        "re-train or re-import it",
    )
