"""The base models this deployment can fine-tune and serve."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CallerDep, SettingsDep
from api.errors import responses
from api.schemas import ModelList, ModelOut

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelList, responses=responses(401))
def list_models(_: CallerDep, settings: SettingsDep) -> ModelList:
    return ModelList(items=[ModelOut(name=name) for name in sorted(settings.base_models)])
