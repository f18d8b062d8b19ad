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
from adalora_core.serving.engine import InferenceEngine
from adalora_core.serving.forward_process import ForwardProcessDied
from adalora_core.serving.requests import Prepared
from api.deps import EngineDep, InferLimitedCaller
from api.errors import responses
from api.inference import resident_tenant_adapter, with_tenant_adapter
from api.schemas import InferRequest, InferResponse
from api.serving import default_base_model
from application.errors import RequestError

router = APIRouter(tags=["inference"])

# A request up to this many characters is tokenized on the event loop when its adapter is in
# memory; a longer one would hold the loop (and every other request) while it tokenizes.
INLINE_PREPARE_CHARS = 4096


def _prepare(
    request: Request, engine: InferenceEngine, tenant_id: str, body: InferRequest
) -> Prepared:
    """Runs in a worker thread: DB lookup, possibly a cold adapter load, tokenization."""
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
    adapter_id = body.adapter_id
    return with_tenant_adapter(
        request, tenant_id, adapter_id, lambda: engine.prepare(adapter_id, body.inputs, parameters)
    )


def _prepare_resident(
    request: Request, engine: InferenceEngine, tenant_id: str, body: InferRequest
) -> Prepared | None:
    """On the event loop, for an adapter row and adapter both in memory: tokenizing one short
    request costs less than the hand-off to a worker thread (docs/benchmarks.md)."""
    adapter_id = body.adapter_id
    if adapter_id is None or body.base_model is not None:
        return None
    texts = (t for row in body.inputs for t in ([row] if isinstance(row, str) else row))
    if sum(len(t) for t in texts) > INLINE_PREPARE_CHARS:
        return None
    parameters = body.parameters.model_dump(exclude_none=True)
    return resident_tenant_adapter(
        request,
        tenant_id,
        adapter_id,
        lambda: engine.prepare_resident(adapter_id, body.inputs, parameters),
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
        prepared = _prepare_resident(request, engine, caller.tenant_id, body)
        if prepared is None:
            prepared = await asyncio.to_thread(_prepare, request, engine, caller.tenant_id, body)
    except BaseModelUnavailable as exc:
        raise RequestError(503, "base_model_unavailable", str(exc)) from exc
    if prepared.base.kind == "causal-lm":
        outputs = await generate_texts(engine, prepared)
    else:
        try:
            outputs = await request.app.state.batcher.submit(prepared)
        except ForwardProcessDied as exc:
            raise RequestError(503, "engine_unavailable", f"{exc}; retry shortly") from exc
    return InferResponse(adapter_id=body.adapter_id, outputs=outputs)


async def generate_texts(engine: InferenceEngine, prepared: Prepared) -> list[dict[str, str]]:
    """Causal-LM rows join the running decode; a request that goes away takes its rows out."""
    handles = engine.generate(prepared)
    try:
        done = await asyncio.gather(*(h.complete() for h in handles))
    finally:
        for handle in handles:
            handle.cancel()
    return [{"text": d.text} for d in done]
