"""OpenAI's Files API for fine-tuning: a file is one of the tenant's data sets, uploaded through
the same path as ``POST /datasets`` (api/uploads.py) and under the same validation, shown as a
``FileObject`` ("file-…" is the data set's id under OpenAI's prefix)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from api.deps import IdempotencyKey, SessionDep, SettingsDep, StoreDep, TrainCaller
from api.openai_ft_schemas import FileDeleted, FileList, FileObject
from api.openai_schemas import openai_errors
from api.routes.datasets import UPLOAD_BODY
from api.uploads import receive_dataset
from application.datasets import delete_dataset
from application.errors import RequestError, not_found
from application.job_metrics import job_metrics_csv
from application.openai_ids import from_openai, job_of_result_file, to_openai
from service import datasets as dataset_rows
from service import jobs as job_rows
from service.store import NotFound
from service.tables import Dataset

router = APIRouter(prefix="/v1", tags=["openai fine-tuning"])

PURPOSE = "fine-tune"
FILES_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": UPLOAD_BODY["requestBody"]["content"]["multipart/form-data"][
                            "schema"
                        ]["properties"]["file"],
                        "purpose": {"type": "string", "enum": [PURPOSE]},
                    },
                }
            }
        },
    }
}


def file_object(dataset: Dataset) -> FileObject:
    return FileObject(
        id=to_openai("file", dataset.id),
        bytes=dataset.size_bytes,
        created_at=int(dataset.created_at.timestamp()),
        filename=dataset.name,
    )


def tenant_file(
    session: Session, tenant_id: str, file_id: str, lock: Literal["update"] | None = None
) -> Dataset:
    """The tenant's data set behind ``file_id``, or OpenAI's 404."""
    dataset_id = from_openai("file", file_id)
    dataset = dataset_rows.get_dataset(session, tenant_id, dataset_id, lock) if dataset_id else None
    if dataset is None:
        raise not_found("file", file_id)
    return dataset


def _purpose(form: FormData) -> None:
    purpose = form.get("purpose")
    if purpose != PURPOSE:
        raise RequestError(
            400,
            "invalid_request",
            f"purpose must be {PURPOSE!r}: files here are fine-tuning data (got {purpose!r})",
            "purpose",
        )


@router.post(
    "/files",
    response_model=FileObject,
    responses=openai_errors(400, 401, 413, 415),
    openapi_extra=FILES_BODY,
)
async def create_file(
    request: Request,
    response: Response,
    caller: TrainCaller,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    idempotency_key: IdempotencyKey = None,
) -> FileObject:
    dataset = await receive_dataset(
        request,
        response,
        caller.tenant_id,
        session,
        settings,
        store,
        idempotency_key,
        check_form=_purpose,
    )
    return file_object(dataset)


@router.get("/files", response_model=FileList, responses=openai_errors(400, 401))
def list_files(
    caller: TrainCaller,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
    purpose: str | None = None,
    order: Literal["desc"] = "desc",
) -> FileList:
    if purpose not in (None, PURPOSE):
        return FileList(data=[], has_more=False)
    cursor = from_openai("file", after) if after else None
    if after and cursor is None:
        raise RequestError(400, "invalid_request", f"{after!r} is not a file id", "after")
    page = dataset_rows.list_datasets(session, caller.tenant_id, limit, cursor)
    return FileList(
        data=[file_object(d) for d in page.items], has_more=page.next_cursor is not None
    )


def result_file(session: Session, tenant_id: str, file_id: str) -> tuple[FileObject, str] | None:
    """A job's result file (its metrics CSV) and its text; None when ``file_id`` is not one."""
    job_id = job_of_result_file(file_id)
    if job_id is None:
        return None
    job = job_rows.get_job(session, tenant_id, job_id)
    if job is None:
        raise not_found("file", file_id)
    text = job_metrics_csv(session, job)
    shown = FileObject(
        id=file_id,
        bytes=len(text.encode()),
        created_at=int((job.finished_at or job.created_at).timestamp()),
        filename=f"{to_openai('ftjob', job.id)}-metrics.csv",
        purpose="fine-tune-results",
    )
    return shown, text


@router.get("/files/{file_id}", response_model=FileObject, responses=openai_errors(401, 404))
def retrieve_file(file_id: str, caller: TrainCaller, session: SessionDep) -> FileObject:
    result = result_file(session, caller.tenant_id, file_id)
    if result is not None:
        return result[0]
    return file_object(tenant_file(session, caller.tenant_id, file_id))


@router.get(
    "/files/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}, **openai_errors(401, 404)},
)
def file_content(
    file_id: str, caller: TrainCaller, session: SessionDep, store: StoreDep
) -> Response:
    result = result_file(session, caller.tenant_id, file_id)
    if result is not None:
        return Response(result[1], media_type="text/csv")
    dataset = tenant_file(session, caller.tenant_id, file_id)
    try:
        chunks = store.iter_read(dataset.storage_key, expected_sha256=dataset.sha256)
    except NotFound as exc:
        raise RequestError(
            503, "artifact_missing", f"the stored content of {file_id!r} is missing right now"
        ) from exc
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={"Content-Length": str(dataset.size_bytes)},
    )


@router.delete(
    "/files/{file_id}", response_model=FileDeleted, responses=openai_errors(401, 404, 409)
)
def delete_file(
    file_id: str, caller: TrainCaller, session: SessionDep, store: StoreDep
) -> FileDeleted:
    if job_of_result_file(file_id) is not None:
        raise RequestError(
            400,
            "invalid_request",
            f"{file_id!r} is a job's result file: it lives as long as its job",
            "file_id",
        )
    dataset = tenant_file(session, caller.tenant_id, file_id, lock="update")
    delete_dataset(session, store, dataset, f"file {file_id!r}")
    return FileDeleted(id=file_id)
