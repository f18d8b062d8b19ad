"""OpenAI's fine-tuning jobs API: create, list, retrieve, cancel, events and checkpoints, in the
official package's shapes. Each call is one application call (application/openai_fine_tuning.py);
the job is the same one ``GET /jobs/{adalora_job_id}`` shows."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Query

from adalora_core.state_machine import IllegalTransition
from api.deps import JobsLimitedCaller, ProducerDep, SessionDep, SettingsDep, TrainCaller
from api.openai_ft_schemas import (
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCheckpointList,
    FineTuningJobEvent,
    FineTuningJobEventList,
    FineTuningJobList,
)
from api.openai_schemas import openai_errors
from application import openai_fine_tuning as fine_tuning
from application.errors import RequestError
from application.jobs import enqueue_job
from application.openai_ids import from_openai
from application.openai_job_request import FineTuningJobCreate
from service import jobs as job_rows

router = APIRouter(prefix="/v1/fine_tuning", tags=["openai fine-tuning"])

Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("/jobs", response_model=FineTuningJob, responses=openai_errors(400, 401, 429))
def create_job(
    body: FineTuningJobCreate,
    background: BackgroundTasks,
    caller: JobsLimitedCaller,
    session: SessionDep,
    settings: SettingsDep,
    producer: ProducerDep,
) -> FineTuningJob:
    submitted = fine_tuning.submit(
        session,
        settings,
        caller.tenant_id,
        body,
        enqueue=lambda job_id: background.add_task(enqueue_job, producer, job_id),
    )
    return FineTuningJob.model_validate(fine_tuning.fine_tuning_job(session, submitted.job))


@router.get("/jobs", response_model=FineTuningJobList, responses=openai_errors(400, 401))
def list_jobs(
    caller: TrainCaller, session: SessionDep, after: str | None = None, limit: Limit = 20
) -> FineTuningJobList:
    cursor = from_openai("ftjob", after) if after else None
    if after and cursor is None:
        raise RequestError(400, "invalid_request", f"{after!r} is not a job id", "after")
    page = job_rows.list_jobs(session, caller.tenant_id, None, limit, cursor)
    return FineTuningJobList(
        data=[
            FineTuningJob.model_validate(fine_tuning.fine_tuning_job(session, j))
            for j in page.items
        ],
        has_more=page.next_cursor is not None,
    )


@router.get(
    "/jobs/{fine_tuning_job_id}", response_model=FineTuningJob, responses=openai_errors(401, 404)
)
def retrieve_job(
    fine_tuning_job_id: str, caller: TrainCaller, session: SessionDep
) -> FineTuningJob:
    job = fine_tuning.openai_job(session, caller.tenant_id, fine_tuning_job_id)
    return FineTuningJob.model_validate(fine_tuning.fine_tuning_job(session, job))


@router.post(
    "/jobs/{fine_tuning_job_id}/cancel",
    response_model=FineTuningJob,
    responses=openai_errors(401, 404, 409),
)
def cancel_job(fine_tuning_job_id: str, caller: TrainCaller, session: SessionDep) -> FineTuningJob:
    job = fine_tuning.openai_job(session, caller.tenant_id, fine_tuning_job_id)
    try:
        job_rows.request_cancel(session, job)
    except IllegalTransition as exc:
        session.rollback()
        raise RequestError(
            409, "conflict", f"job {fine_tuning_job_id!r} is {exc.current} and cannot be cancelled"
        ) from exc
    session.commit()
    return FineTuningJob.model_validate(fine_tuning.fine_tuning_job(session, job))


@router.get(
    "/jobs/{fine_tuning_job_id}/events",
    response_model=FineTuningJobEventList,
    responses=openai_errors(400, 401, 404),
)
def list_events(
    fine_tuning_job_id: str,
    caller: TrainCaller,
    session: SessionDep,
    after: str | None = None,
    limit: Limit = 20,
) -> FineTuningJobEventList:
    job = fine_tuning.openai_job(session, caller.tenant_id, fine_tuning_job_id)
    events, more = fine_tuning.job_events(session, job, after, limit)
    return FineTuningJobEventList(
        data=[FineTuningJobEvent.model_validate(e) for e in events], has_more=more
    )


@router.get(
    "/jobs/{fine_tuning_job_id}/checkpoints",
    response_model=FineTuningJobCheckpointList,
    responses=openai_errors(400, 401, 404),
)
def list_checkpoints(
    fine_tuning_job_id: str,
    caller: TrainCaller,
    session: SessionDep,
    after: str | None = None,
    limit: Limit = 10,
) -> FineTuningJobCheckpointList:
    job = fine_tuning.openai_job(session, caller.tenant_id, fine_tuning_job_id)
    rows, more = fine_tuning.job_checkpoints(session, job, after, limit)
    data = [FineTuningJobCheckpoint.model_validate(r) for r in rows]
    return FineTuningJobCheckpointList(
        data=data,
        has_more=more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )
