"""Adapters: import, metadata, the learned rank pattern (JSON or heatmap), downloads, deletion."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from api.deps import (
    CallerDep,
    IdempotencyKey,
    PageCursor,
    PageLimit,
    ServingDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    TrainCaller,
)
from api.errors import responses
from api.idempotency import replay
from api.rows import page_body, tenant_row
from api.schemas import AdapterList, AdapterOut, RanksOut
from api.uploads import form_file, form_text, multipart_form, spool, staged_file
from application.adapter_import import (
    IMPORT,
    ImportRequest,
    from_zip,
    import_adapter,
    parse_labels,
    replayed,
)
from application.errors import RequestError
from application.heatmap import draw_rank_heatmap
from application.publishing import remove_adapter
from application.request_fields import Name
from service import adapters as adapter_rows
from service.store import ChecksumMismatch, NotFound
from service.tables import Adapter
from service.vocabulary import ArtifactFormat, OutputMode

log = logging.getLogger("adalora.api.adapters")
router = APIRouter(tags=["adapters"])

IMAGE_TYPES = {"png": "image/png", "svg": "image/svg+xml"}


def adapter_out(adapter: Adapter) -> AdapterOut:
    return AdapterOut.model_validate(
        {
            "id": adapter.id,
            "name": adapter.name,
            "job_id": adapter.job_id,
            "base_model": adapter.base_model,
            "task": adapter.task,
            "labels": adapter.labels,
            "init_r": adapter.init_r,
            "target_r": adapter.target_r,
            "total_rank": adapter.total_rank,
            "trainable_params": adapter.trainable_params,
            "size_bytes": adapter.size_bytes,
            "sha256": adapter.sha256,
            "formats": [f.value for f in ArtifactFormat if f in adapter.formats],
            "metrics": adapter.metrics,
            "status": adapter.status,
            "created_at": adapter.created_at,
            "source": adapter.source,
        }
    )


def _adapter(session: Session, tenant_id: str, adapter_id: str) -> Adapter:
    return tenant_row(adapter_rows.get_adapter, "adapter", session, tenant_id, adapter_id)


NAME = TypeAdapter(Name)
IMPORT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "base_model"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "a zip of a PEFT adapter directory "
                            "(adapter_config.json and adapter_model.safetensors or .bin, at the "
                            "top or one folder down)",
                        },
                        "base_model": {"type": "string", "description": "a registered base"},
                        "task": {
                            "type": "string",
                            "enum": ["classification", "regression", "causal-lm", "seq2seq"],
                            "description": "default: from the config's task_type",
                        },
                        "labels": {
                            "type": "string",
                            "description": "a JSON list of label names (classification)",
                        },
                        "name": {"type": "string", "maxLength": 255},
                        "output": {"type": "string", "enum": ["unmerged", "merged"]},
                    },
                }
            }
        },
    }
}


def _import_request(form: FormData) -> ImportRequest:
    """The form's text fields as an ImportRequest; each bad one is a 422 naming it."""
    fields = {f: form_text(form, f) for f in ("base_model", "task", "labels", "name", "output")}
    if not fields["base_model"]:
        raise RequestError(422, "validation_error", "is required", "base_model")
    name = fields["name"] or None
    if name is not None:
        try:
            NAME.validate_python(name)
        except ValidationError as exc:
            message = "1 to 255 characters, no control characters"
            raise RequestError(422, "validation_error", message, "name") from exc
    try:
        output = OutputMode(fields["output"] or OutputMode.UNMERGED)
    except ValueError as exc:
        raise RequestError(422, "validation_error", "unmerged or merged", "output") from exc
    return ImportRequest(
        base_model=str(fields["base_model"]),
        task=fields["task"] or None,
        labels=parse_labels(fields["labels"]),
        name=name,
        output=output,
    )


@router.post(
    "/adapters/import",
    status_code=201,
    response_model=AdapterOut,
    responses={
        200: {"model": AdapterOut, "description": "replay of an earlier identical import"},
        **responses(400, 401, 409, 413, 415, 422),
    },
    openapi_extra=IMPORT_BODY,
)
async def import_peft_adapter(
    request: Request,
    response: Response,
    caller: TrainCaller,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    idempotency_key: IdempotencyKey = None,
) -> AdapterOut:
    """A PEFT LoRA or AdaLoRA adapter trained elsewhere becomes one of the tenant's adapters."""
    limit = settings.max_upload_bytes
    async with multipart_form(request, limit, max_fields=8) as form:
        upload = form_file(form)
        body = _import_request(form)
        async with staged_file(Path(settings.home) / "uploads", ".zip") as tmp:
            content_sha256, _ = await spool(upload, tmp, limit)
            idempotency = None
            if idempotency_key is not None:
                idempotency = (idempotency_key, body.digest(content_sha256))
                earlier = await run_in_threadpool(replayed, session, caller.tenant_id, idempotency)
                if earlier is not None:
                    return adapter_out(replay(earlier, idempotency[1], response, IMPORT))
            row, created = await run_in_threadpool(
                import_adapter,
                session,
                store,
                settings,
                caller.tenant_id,
                from_zip(tmp),
                body,
                idempotency,
            )
    if not created:
        assert idempotency is not None
        row = replay(row, idempotency[1], response, IMPORT)
    return adapter_out(row)


@router.get("/adapters", response_model=AdapterList, responses=responses(401, 422))
def list_adapters(
    caller: CallerDep,
    session: SessionDep,
    limit: PageLimit = 50,
    cursor: PageCursor = None,
) -> AdapterList:
    page = adapter_rows.list_adapters(session, caller.tenant_id, limit, cursor)
    return page_body(AdapterList, page, adapter_out)


@router.get("/adapters/{adapter_id}", response_model=AdapterOut, responses=responses(401, 404))
def get_adapter(adapter_id: str, caller: CallerDep, session: SessionDep) -> AdapterOut:
    return adapter_out(_adapter(session, caller.tenant_id, adapter_id))


def ranks_out(adapter: Adapter) -> RanksOut:
    info = adapter.rank_info or {}
    return RanksOut.model_validate(
        {
            "init_r": adapter.init_r,
            "target_r": adapter.target_r,
            "budget": info.get("budget") or {},
            "modules": info.get("modules") or [],
            "history": info.get("history") or [],
        }
    )


@router.get(
    "/adapters/{adapter_id}/ranks",
    response_model=RanksOut,
    responses={
        200: {
            "content": {"image/png": {}, "image/svg+xml": {}},
            "description": "JSON by default; a heatmap with ?format=png|svg",
        },
        **responses(401, 404, 422),
    },
)
async def get_ranks(
    adapter_id: str,
    caller: CallerDep,
    session: SessionDep,
    format: Literal["json", "png", "svg"] = "json",
) -> RanksOut | Response:
    adapter = await run_in_threadpool(_adapter, session, caller.tenant_id, adapter_id)
    ranks = ranks_out(adapter)
    if format == "json":
        return ranks
    image = await run_in_threadpool(
        draw_rank_heatmap,
        [m.model_dump() for m in ranks.modules],
        adapter.init_r,
        f"{adapter.name or adapter.id}: final ranks",
        format,
    )
    return Response(image, media_type=IMAGE_TYPES[format])


def _checked_stream(chunks: Iterator[bytes], on_mismatch: Callable[[], None]) -> Iterator[bytes]:
    """Pass the store's chunks through; a checksum failure at the end aborts the response (the
    client sees an incomplete download, never bad bytes as good) and asks ``on_mismatch`` to
    confirm the corruption."""
    try:
        yield from chunks
    except ChecksumMismatch:
        log.error("checksum mismatch while streaming an adapter", exc_info=True)
        on_mismatch()
        raise


@router.get(
    "/adapters/{adapter_id}/download",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "the adapter as a zip"},
        **responses(401, 404, 422, 503),
    },
)
def download_adapter(
    adapter_id: str,
    serving: ServingDep,
    caller: TrainCaller,
    session: SessionDep,
    store: StoreDep,
    format: ArtifactFormat = ArtifactFormat.PEFT,
) -> StreamingResponse:
    adapter = _adapter(session, caller.tenant_id, adapter_id)
    stored = adapter.formats.get(format)
    if stored is None:
        raise RequestError(
            404, "not_found", f"adapter {adapter_id!r} has no {format!r} format stored"
        )

    def confirm_corrupt() -> None:
        """A failed checksum condemns the adapter only if a second, whole read fails too."""
        try:
            store.open_read(stored["storage_key"], stored["sha256"])
            return
        except ChecksumMismatch:
            pass
        except NotFound:
            return  # missing is not corrupt: it may come back
        serving.directory.condemn(caller.tenant_id, adapter_id, "its download failed its checksum")

    try:
        chunks = store.iter_read(stored["storage_key"], expected_sha256=stored["sha256"])
    except NotFound as exc:
        # Possibly a restore or replication in progress: say so, but do not condemn the adapter.
        raise RequestError(
            503,
            "artifact_missing",
            f"the stored {format!r} file of {adapter_id!r} is missing right now; retry shortly",
        ) from exc
    headers = {
        "Content-Disposition": f'attachment; filename="{adapter_id}-{format}.zip"',
        "Content-Length": str(stored["size_bytes"]),
        "X-Checksum-Sha256": stored["sha256"],
    }
    return StreamingResponse(
        _checked_stream(chunks, confirm_corrupt), media_type="application/zip", headers=headers
    )


@router.delete("/adapters/{adapter_id}", status_code=204, responses=responses(401, 404))
def delete_adapter(
    adapter_id: str, caller: TrainCaller, session: SessionDep, store: StoreDep, serving: ServingDep
) -> Response:
    adapter = _adapter(session, caller.tenant_id, adapter_id)
    remove_adapter(session, store, serving.forget_adapter, adapter)
    return Response(status_code=204)
