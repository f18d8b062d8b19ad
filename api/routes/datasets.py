"""Dataset upload (streamed to disk, validated line by line), listing and deletion."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response

from api.deps import (
    IdempotencyKey,
    PageCursor,
    PageLimit,
    SessionDep,
    SettingsDep,
    StoreDep,
    TrainCaller,
)
from api.errors import responses
from api.rows import page_body, tenant_row
from api.schemas import DatasetList, DatasetOut
from api.uploads import receive_dataset
from application.datasets import delete_dataset as delete_dataset_row
from service import datasets as dataset_rows
from service.tables import Dataset

log = logging.getLogger("adalora.api.datasets")
router = APIRouter(tags=["datasets"])

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": ".jsonl, .csv or .tsv (csv/tsv need a header row)",
                        },
                        "name": {"type": "string", "maxLength": 255},
                    },
                }
            }
        },
    }
}


def dataset_out(dataset: Dataset) -> DatasetOut:
    return DatasetOut(
        id=dataset.id,
        name=dataset.name,
        format=dataset.format,  # type: ignore[arg-type]
        header=dataset.has_header,
        num_rows=dataset.num_rows,
        columns=dataset.columns,
        column_types=dataset.column_types,
        sha256=dataset.sha256,
        size_bytes=dataset.size_bytes,
        created_at=dataset.created_at,
    )


@router.post(
    "/datasets",
    status_code=201,
    response_model=DatasetOut,
    responses={
        200: {"model": DatasetOut, "description": "replay of an earlier identical upload"},
        **responses(400, 401, 409, 413, 415, 422),
    },
    openapi_extra=UPLOAD_BODY,
)
async def upload_dataset(
    request: Request,
    response: Response,
    caller: TrainCaller,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    idempotency_key: IdempotencyKey = None,
) -> DatasetOut:
    return dataset_out(
        await receive_dataset(
            request, response, caller.tenant_id, session, settings, store, idempotency_key
        )
    )


@router.get("/datasets", response_model=DatasetList, responses=responses(401, 422))
def list_datasets(
    caller: TrainCaller,
    session: SessionDep,
    limit: PageLimit = 50,
    cursor: PageCursor = None,
) -> DatasetList:
    page = dataset_rows.list_datasets(session, caller.tenant_id, limit, cursor)
    return page_body(DatasetList, page, dataset_out)


@router.get("/datasets/{dataset_id}", response_model=DatasetOut, responses=responses(401, 404))
def get_dataset(dataset_id: str, caller: TrainCaller, session: SessionDep) -> DatasetOut:
    dataset = tenant_row(dataset_rows.get_dataset, "dataset", session, caller.tenant_id, dataset_id)
    return dataset_out(dataset)


@router.delete("/datasets/{dataset_id}", status_code=204, responses=responses(401, 404, 409))
def delete_dataset(
    dataset_id: str, caller: TrainCaller, session: SessionDep, store: StoreDep
) -> Response:
    dataset = tenant_row(
        dataset_rows.get_dataset, "dataset", session, caller.tenant_id, dataset_id, lock="update"
    )
    delete_dataset_row(session, store, dataset, f"dataset {dataset_id!r}")
    return Response(status_code=204)
