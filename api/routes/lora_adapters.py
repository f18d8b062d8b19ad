"""vLLM's runtime adapter calls, for operators: /v1/load_lora_adapter imports an adapter directory
from under ADALORA_ADAPTER_IMPORT_DIR into the caller's tenant under ``lora_name``;
/v1/unload_lora_adapter deletes it by name. Admin keys only; off unless the root is set.
Answers are vLLM's (plain text on success); errors take OpenAI's shape, as everywhere under /v1."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from api.deps import AdminCaller, ServingDep, SessionDep, SettingsDep, StoreDep
from api.errors import responses
from application.adapter_import import (
    ImportRequest,
    base_of,
    from_directory,
    import_adapter,
    runtime_directory,
)
from application.errors import RequestError, not_found
from application.job_request import TaskName
from application.publishing import remove_adapter
from application.request_fields import Name
from service import adapters as adapter_rows

router = APIRouter(tags=["openai"])
PLAIN_TEXT = {"content": {"text/plain": {}}, "description": "vLLM's plain-text success"}


class LoadLoraAdapter(BaseModel):
    lora_name: Name
    lora_path: str = Field(min_length=1, max_length=4096)
    # Not in vLLM's request (it serves one base): which registered base, when the adapter's
    # base_model_name_or_path does not name one; and what a classification adapter needs.
    base_model: str | None = None
    task: TaskName | None = None
    labels: list[str] | None = None


class UnloadLoraAdapter(BaseModel):
    lora_name: Name


@router.post(
    "/v1/load_lora_adapter",
    responses={200: PLAIN_TEXT, **responses(400, 401, 403, 404, 409, 422)},
)
async def load_lora_adapter(
    body: LoadLoraAdapter,
    caller: AdminCaller,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
) -> PlainTextResponse:
    directory = runtime_directory(settings, body.lora_path)
    request = ImportRequest(
        base_model=base_of(settings, directory, body.base_model),
        task=body.task,
        labels=body.labels,
        name=body.lora_name,
    )
    await run_in_threadpool(
        import_adapter,
        session,
        store,
        settings,
        caller.tenant_id,
        from_directory(directory),
        request,
    )
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post(
    "/v1/unload_lora_adapter",
    responses={200: PLAIN_TEXT, **responses(400, 401, 403, 404, 409, 422)},
)
def unload_lora_adapter(
    body: UnloadLoraAdapter,
    caller: AdminCaller,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    serving: ServingDep,
) -> PlainTextResponse:
    runtime_directory(settings, ".")  # off unless the import root is set
    adapter = adapter_rows.find_by_name(session, caller.tenant_id, body.lora_name)
    if adapter is None:
        raise not_found("adapter", body.lora_name)
    held = serving.rows_using(adapter.id)
    if held:
        raise RequestError(
            409,
            "adapter_in_use",
            f"{held} row(s) of requests on {body.lora_name!r} are in flight; retry once they "
            "finish",
            "lora_name",
        )
    remove_adapter(session, store, serving.forget_adapter, adapter)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
