"""Placeholder until the serving helper's engine route lands: answers 503 for POST /infer."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import InferLimitedCaller
from api.errors import ApiError, responses

router = APIRouter(tags=["inference"])


@router.post("/infer", responses=responses(401, 429, 503))
def infer(_: InferLimitedCaller) -> None:
    raise ApiError(503, "engine_unavailable", "inference engine not available")
