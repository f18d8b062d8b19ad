"""POST /infer: rows of text through a tenant's adapter (or the plain base), batched with others.

Response rows: classification {"label", "score", "scores"}, regression {"value"}, causal-lm /
seq2seq {"text"}; with adapter_id null on a sequence-classification base, {"embedding"} (the
masked mean of the final hidden states). Errors: unknown or other tenant's adapter 404; an
artifact that fails its checksum or does not parse 409 `adapter_corrupt` (the row is marked
corrupt, other adapters keep serving); a well-formed adapter this base cannot serve 409
`adapter_incompatible`; bad fields 422 naming the field; engine or base model unavailable 503.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from adalora_core.errors import ConfigError
from adalora_core.serving.bases import BaseModelUnavailable
from adalora_core.serving.cache import (
    AdapterCorrupt,
    AdapterIncompatible,
    AdapterNotFound,
    AdapterTooLarge,
    AdapterUnavailable,
)
from adalora_core.serving.engine import InferenceEngine
from adalora_core.serving.requests import Prepared
from api.deps import EngineDep, InferLimitedCaller
from api.errors import ApiError, not_found, responses
from api.schemas import InferRequest, InferResponse
from api.serving import AdapterRowFacts, StoreAdapterSource, default_base_model
from service import adapters as adapter_rows

router = APIRouter(tags=["inference"])


def _prepare(
    request: Request, engine: InferenceEngine, tenant_id: str, body: InferRequest
) -> Prepared:
    """Runs in a worker thread: DB lookup, possibly a cold adapter load, tokenization.

    The session is closed before the adapter loads: a cold load can take a while and reads
    the store on its own, so holding a pooled connection through it would let a burst of
    cold requests drain the pool."""
    parameters = body.parameters.model_dump(exclude_none=True)
    if body.adapter_id is None:
        settings = request.app.state.settings
        name = body.base_model or default_base_model(settings)
        if name is None or name not in settings.base_models:
            known = sorted(settings.base_models)
            raise ConfigError("base_model", f"unknown base model {name!r}; known: {known}")
        return engine.prepare(None, body.inputs, parameters, base_model=name)
    if body.base_model is not None:
        raise ConfigError("base_model", "only allowed with adapter_id null")
    sessions = request.app.state.sessions
    with sessions() as session:
        row = adapter_rows.get_adapter(session, tenant_id, body.adapter_id)
        status = None if row is None else row.status
        facts = None if row is None else AdapterRowFacts.of(row)
    if status is None:
        raise not_found("adapter", body.adapter_id)
    if status == "corrupt":
        raise _corrupt(body.adapter_id)
    try:
        assert facts is not None
        with StoreAdapterSource.row_already_read(facts):
            return engine.prepare(body.adapter_id, body.inputs, parameters)
    except AdapterNotFound:
        raise not_found("adapter", body.adapter_id) from None
    except AdapterCorrupt as exc:
        with sessions() as session:
            adapter_rows.mark_corrupt(session, body.adapter_id)
            session.commit()
        raise _corrupt(body.adapter_id, exc.reason) from exc
    except AdapterIncompatible as exc:
        raise ApiError(409, "adapter_incompatible", str(exc)) from exc
    except AdapterTooLarge as exc:
        raise ApiError(503, "adapter_too_large", str(exc)) from exc
    except AdapterUnavailable as exc:
        raise ApiError(503, "adapter_unavailable", f"{exc}; retry shortly") from exc


def _corrupt(adapter_id: str, reason: str = "") -> ApiError:
    detail = f" ({reason})" if reason else ""
    return ApiError(
        409,
        "adapter_corrupt",
        f"adapter {adapter_id!r} failed its integrity check and cannot be served{detail}; "
        "re-train or re-import it",
    )


@router.post(
    "/infer",
    response_model=InferResponse,
    responses=responses(401, 404, 409, 422, 429, 503),
)
async def infer(
    body: InferRequest, request: Request, caller: InferLimitedCaller, engine: EngineDep
) -> InferResponse:
    try:
        prepared = await asyncio.to_thread(_prepare, request, engine, caller.tenant_id, body)
    except BaseModelUnavailable as exc:
        raise ApiError(503, "base_model_unavailable", str(exc)) from exc
    outputs = await request.app.state.batcher.submit(prepared)
    return InferResponse(adapter_id=body.adapter_id, outputs=outputs)
