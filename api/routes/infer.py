"""POST /infer: rows of text through a tenant's adapter (or the plain base), batched with others.

Response rows: classification {"label", "score", "scores"}, regression {"value"}, causal-lm /
seq2seq {"text"}; with adapter_id null on a sequence-classification base, {"embedding"} (the
masked mean of the final hidden states). Errors: unknown or other tenant's adapter 404; an
artifact that fails its checksum or does not parse 409 `adapter_corrupt` (the row is marked
corrupt, other adapters keep serving); a well-formed adapter this base cannot serve 409
`adapter_incompatible`; bad fields 422 naming the field; engine or base model unavailable 503.
Every refusal comes from the admission step (`application.admission`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from adalora_core.serving.handles import complete_all
from api.deps import MeteredCaller, ServingDep
from api.disconnect import unless_disconnected
from api.errors import responses
from api.schemas import InferRequest, InferResponse
from application.admission import Admitted, InferCall, TextRows
from application.engine_factory import Serving

router = APIRouter(tags=["inference"])


@router.post(
    "/infer",
    response_model=InferResponse,
    responses=responses(401, 404, 409, 422, 429, 503),
)
async def infer(
    body: InferRequest, request: Request, metered: MeteredCaller, serving: ServingDep
) -> InferResponse:
    parameters = body.parameters.model_dump(exclude_none=True, exclude={"truncate"})
    inputs = TextRows(body.inputs, body.parameters.truncate)
    call = InferCall(metered.tenant_id, body.adapter_id, body.base_model, inputs, parameters)
    # A short request whose adapter is in memory is prepared here: tokenizing it costs less than
    # the hand-off to a worker thread (docs/benchmarks.md).
    admitted = serving.admission.infer_resident(call)
    if admitted is None:
        admitted = await asyncio.to_thread(serving.admission.infer, call)
    await metered.charge_rows(admitted.rows)
    outputs = await unless_disconnected(request, _run(serving, metered.tenant_id, admitted))
    return InferResponse(adapter_id=body.adapter_id, outputs=outputs)


async def _run(serving: Serving, tenant_id: str, admitted: Admitted) -> list[dict[str, Any]]:
    prepared = admitted.prepared
    if prepared.base.kind == "causal-lm":
        done = await complete_all(serving.admission.generate(tenant_id, admitted))
        return [{"text": d.text} for d in done]
    return await serving.run_encoder(prepared)
