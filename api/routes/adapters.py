"""Adapters: metadata, the learned rank pattern (JSON or heatmap), downloads, deletion."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Literal

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from api.deps import (
    CallerDep,
    PageCursor,
    PageLimit,
    ServingDep,
    SessionDep,
    StoreDep,
    TrainCaller,
)
from api.errors import responses
from api.rows import page_body, tenant_row
from api.schemas import AdapterList, AdapterOut, RanksOut
from application.errors import RequestError
from application.heatmap import draw_rank_heatmap
from service import adapters as adapter_rows
from service.store import ChecksumMismatch, NotFound
from service.tables import Adapter
from service.vocabulary import ArtifactFormat

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
        }
    )


def _adapter(session: Session, tenant_id: str, adapter_id: str) -> Adapter:
    return tenant_row(adapter_rows.get_adapter, "adapter", session, tenant_id, adapter_id)


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
    keys = adapter_rows.delete_adapter(session, adapter)
    session.commit()
    serving.forget_adapter(caller.tenant_id, adapter_id)
    for key in keys:
        try:
            store.delete(key)
        except Exception:  # the row is gone; a leftover file is harmless
            log.warning("could not delete %s from the store", key, exc_info=True)
    return Response(status_code=204)
