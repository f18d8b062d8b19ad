"""Job submission (validated up front, idempotent), listing, events and cancellation."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from sqlalchemy.orm import Session

from adalora_core.config import BudgetSchedule
from adalora_core.state_machine import IllegalTransition
from api import event_stream, sse
from api.deps import (
    IdempotencyKey,
    JobsLimitedCaller,
    PageCursor,
    PageLimit,
    ProducerDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    TrainCaller,
)
from api.errors import responses
from api.rows import page_body, tenant_row
from api.schemas import (
    CheckpointList,
    CheckpointOut,
    EventList,
    EventOut,
    JobList,
    JobOut,
    ScheduleOut,
    SchedulePoint,
)
from api.sse import sse_response
from application.checkpoints import checkpoint_archive, job_checkpoint
from application.errors import RequestError
from application.job_metrics import job_metrics_csv
from application.job_request import JobCreate
from application.jobs import enqueue_job
from application.jobs import submit_job as submit
from service import checkpoints as checkpoint_rows
from service import jobs as job_rows
from service.store import NotFound
from service.tables import Job
from service.vocabulary import ArtifactFormat, JobStatus

router = APIRouter(tags=["jobs"])


def job_out(job: Job) -> JobOut:
    return JobOut.model_validate(
        {
            "id": job.id,
            "name": job.name,
            "status": job.status,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "base_model": job.base_model,
            "task": job.task,
            "dataset_id": job.dataset_id,
            "validation_dataset_id": job.validation_dataset_id,
            "hyperparameters": job.hyperparameters,
            "progress": job.progress,
            "metrics": job.metrics,
            "budget": job.budget,
            "adapter_id": job.adapter_id,
            "error": job.error,
            "metadata": job.metadata_,
        }
    )


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "replay of an earlier identical submission"},
        **responses(400, 401, 409, 422, 429),
    },
)
def submit_job(
    body: JobCreate,
    response: Response,
    background: BackgroundTasks,
    caller: JobsLimitedCaller,
    session: SessionDep,
    settings: SettingsDep,
    producer: ProducerDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    submitted = submit(
        session,
        settings,
        caller.tenant_id,
        body,
        idempotency_key,
        enqueue=lambda job_id: background.add_task(enqueue_job, producer, job_id),
    )
    if not submitted.created:
        response.status_code = 200  # a replay of the job an identical request created
    return job_out(submitted.job)


@router.get("/jobs", response_model=JobList, responses=responses(401, 422))
def list_jobs(
    caller: TrainCaller,
    session: SessionDep,
    status: JobStatus | None = None,
    limit: PageLimit = 50,
    cursor: PageCursor = None,
) -> JobList:
    page = job_rows.list_jobs(session, caller.tenant_id, status, limit, cursor)
    return page_body(JobList, page, job_out)


def _job(session: Session, tenant_id: str, job_id: str) -> Job:
    return tenant_row(job_rows.get_job, "job", session, tenant_id, job_id)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=responses(401, 404))
def get_job(job_id: str, caller: TrainCaller, session: SessionDep) -> JobOut:
    return job_out(_job(session, caller.tenant_id, job_id))


@router.get(
    "/jobs/{job_id}/tensorboard",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"application/zip": {}},
            "description": "the job's TensorBoard event files as a zip, for tensorboard --logdir",
        },
        **responses(401, 404, 503),
    },
)
def download_tensorboard(
    job_id: str, caller: TrainCaller, session: SessionDep, store: StoreDep
) -> StreamingResponse:
    job = _job(session, caller.tenant_id, job_id)
    stored = (job.tracking or {}).get("tensorboard")
    if not stored:
        raise RequestError(
            404,
            "not_found",
            f"job {job_id!r} has no TensorBoard event files stored (its report_to does not name "
            "tensorboard, or it has not reached its first checkpoint)",
        )
    try:
        chunks = store.iter_read(stored["key"], expected_sha256=stored["sha256"])
    except NotFound as exc:
        raise RequestError(
            503, "artifact_missing", f"the event files of {job_id!r} are missing right now"
        ) from exc
    headers = {
        "Content-Disposition": f'attachment; filename="{job_id}-tensorboard.zip"',
        "Content-Length": str(stored["size_bytes"]),
        "X-Checksum-Sha256": stored["sha256"],
    }
    return StreamingResponse(chunks, media_type="application/zip", headers=headers)


@router.get(
    "/jobs/{job_id}/events",
    response_model=EventList,
    responses={
        **responses(401, 404, 422),
        200: {
            "content": {sse.MEDIA_TYPE: {}},
            "description": "A page of events as JSON, or, when the request accepts "
            "text/event-stream, every event as it happens until the job ends.",
        },
    },
)
def list_events(
    job_id: str,
    request: Request,
    caller: TrainCaller,
    session: SessionDep,
    settings: SettingsDep,
    after: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    accept: Annotated[str | None, Header()] = None,
    last_event_id: Annotated[int | None, Header(ge=0, le=2**62)] = None,
) -> EventList | StreamingResponse:
    job = _job(session, caller.tenant_id, job_id)
    if event_stream.wants_event_stream(accept):
        session.close()  # the stream polls in short transactions of its own
        timing = event_stream.StreamTiming(
            settings.events_poll_interval_s,
            settings.events_keepalive_s,
            settings.events_stream_max_s,
        )
        stream = event_stream.job_events(
            request.app.state.sessions,
            job.id,
            last_event_id if last_event_id is not None else after,
            timing,
        )
        return sse_response(stream)
    events = job_rows.list_events(session, job, after, limit)
    return EventList(
        items=[EventOut.model_validate(e, from_attributes=True) for e in events],
        next_after=events[-1].id if events else after,
    )


# At most about this many points describe a schedule curve (plus its corners).
SCHEDULE_POINTS = 400


@router.get("/jobs/{job_id}/schedule", response_model=ScheduleOut, responses=responses(401, 404))
def get_schedule(job_id: str, caller: TrainCaller, session: SessionDep) -> ScheduleOut:
    job = _job(session, caller.tenant_id, job_id)
    schedule = BudgetSchedule(**(job.hyperparameters or {})["schedule"])
    budget = job.budget or {}
    initial, target = budget.get("initial"), budget.get("target")
    points: list[SchedulePoint] = []
    if initial is not None and target is not None:
        total = schedule.total_steps
        corners = {0, schedule.t_init, schedule.final_mask_step, total}
        steps = sorted(corners | set(range(0, total + 1, max(1, total // SCHEDULE_POINTS))))
        points = [
            SchedulePoint(step=s, budget=schedule.budget(s, initial, target))
            for s in steps
            if 0 <= s <= total
        ]
    return ScheduleOut(
        total_steps=schedule.total_steps,
        t_init=schedule.t_init,
        final_mask_step=schedule.final_mask_step,
        initial=initial,
        target=target,
        points=points,
    )


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, responses=responses(401, 404, 409))
def cancel_job(job_id: str, caller: TrainCaller, session: SessionDep) -> JobOut:
    job = _job(session, caller.tenant_id, job_id)
    try:
        job_rows.request_cancel(session, job)
    except IllegalTransition as exc:
        session.rollback()
        raise RequestError(
            409, "conflict", f"job {job_id!r} is {exc.current} and can no longer be cancelled"
        ) from exc
    session.commit()
    return job_out(job)


@router.get(
    "/jobs/{job_id}/metrics.csv",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {}}, "description": "one row per progress or eval event"},
        **responses(401, 404),
    },
)
def get_metrics_csv(job_id: str, caller: TrainCaller, session: SessionDep) -> Response:
    job = _job(session, caller.tenant_id, job_id)
    return Response(
        job_metrics_csv(session, job),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{job.id}-metrics.csv"'},
    )


@router.get(
    "/jobs/{job_id}/checkpoints", response_model=CheckpointList, responses=responses(401, 404)
)
def list_checkpoints(job_id: str, caller: TrainCaller, session: SessionDep) -> CheckpointList:
    job = _job(session, caller.tenant_id, job_id)
    rows = checkpoint_rows.job_checkpoints(session, job.id)
    return CheckpointList(
        items=[CheckpointOut.model_validate(r, from_attributes=True) for r in rows]
    )


@router.get(
    "/jobs/{job_id}/checkpoints/{step}/download",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "the checkpoint's adapter"},
        **responses(401, 404, 422, 503),
    },
)
def download_checkpoint(
    job_id: str,
    step: int,
    caller: TrainCaller,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    background: BackgroundTasks,
    format: ArtifactFormat = ArtifactFormat.PEFT,
) -> FileResponse:
    job = _job(session, caller.tenant_id, job_id)
    checkpoint = job_checkpoint(session, job, step)
    work = Path(tempfile.mkdtemp(prefix="adalora-ckpt-"))
    try:
        archive = checkpoint_archive(store, settings, checkpoint, format, work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    background.add_task(shutil.rmtree, work, ignore_errors=True)
    return FileResponse(
        archive,
        media_type="application/zip",
        filename=f"{job.id}-step-{step}-{format}.zip",
    )
