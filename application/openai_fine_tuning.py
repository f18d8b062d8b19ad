"""OpenAI's fine-tuning jobs over ours: a ``POST /v1/fine_tuning/jobs`` body becomes our job
body (``JobCreate``) and is submitted like any job (``application.jobs.submit_job``); a job, its
events and its checkpoints are rendered in the shapes of the official package's types. The job
is the same row ``GET /jobs/{id}`` shows; only the view differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from application import model_names
from application.errors import RequestError
from application.job_request import Columns, InitFrom, JobCreate, TrainingParams
from application.jobs import Submission, submit_job
from application.openai_ids import from_openai, result_file_id, to_openai
from application.openai_job_request import AdaLoraExtra, FineTuningJobCreate, Hyperparameters
from application.tracking_request import report_to_from_integrations
from service import checkpoints as checkpoint_rows
from service import datasets as dataset_rows
from service import jobs as job_rows
from service.base_models import is_causal_lm
from service.settings import Settings
from service.tables import Adapter, Checkpoint, Dataset, Job, JobEvent
from service.vocabulary import EventKind, JobStatus

SUPERVISED = "supervised"
STATUS = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "running",
    JobStatus.UPLOADING: "running",
    JobStatus.CANCELLING: "running",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}
FINISHED = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}


def bad(param: str, message: str) -> RequestError:
    return RequestError(400, "invalid_request", message, param)


# --- create -----------------------------------------------------------------------------------


def _hyperparameters(body: FineTuningJobCreate) -> Hyperparameters:
    method = body.method
    if method is not None and method.type != SUPERVISED:
        raise bad(
            "method.type",
            f"method {method.type!r} is not available here; this service fine-tunes with "
            f"{SUPERVISED!r} (AdaLoRA) only",
        )
    nested = method.supervised.hyperparameters if method and method.supervised else None
    if nested is not None and body.hyperparameters is not None:
        raise bad(
            "hyperparameters",
            "give hyperparameters in method.supervised.hyperparameters or at the top level "
            "(deprecated), not both",
        )
    return nested or body.hyperparameters or Hyperparameters()


def _file(session: Session, tenant_id: str, file_id: str, param: str) -> Dataset:
    dataset_id = from_openai("file", file_id)
    dataset = dataset_rows.get_dataset(session, tenant_id, dataset_id) if dataset_id else None
    if dataset is None:
        raise bad(param, f"file {file_id!r} not found")
    return dataset


def _task_and_columns(settings: Settings, base: str, train: Dataset) -> tuple[str, Columns | None]:
    """A base that generates learns the chat (or prompt/completion) rows; an encoder base
    learns to classify a file with "text" and "label" columns."""
    if is_causal_lm(settings.base_models[base]):
        return "causal-lm", None
    if {"text", "label"} <= set(train.columns):
        return "classification", Columns(text="text", label="label")
    raise bad(
        "training_file",
        f"base model {base!r} classifies text: the file needs 'text' and 'label' columns "
        f"(it has: {', '.join(train.columns)})",
    )


def _model(
    session: Session, settings: Settings, tenant_id: str, model: str
) -> tuple[str, InitFrom | None]:
    """The base a job trains on, and where it starts when ``model`` is a fine-tuned name
    (continue training from that adapter or checkpoint)."""
    if model in settings.base_models:
        return model, None
    source = model_names.resolve(session, tenant_id, model)
    if isinstance(source, Adapter):
        return source.base_model, InitFrom(adapter_id=source.id)
    if isinstance(source, Checkpoint):
        return source.base_model, InitFrom(checkpoint_id=source.id)
    known = ", ".join(sorted(settings.base_models)) or "(none)"
    raise bad(
        "model",
        f"model {model!r} is neither a base model here (known: {known}) nor one of your "
        "fine-tuned models",
    )


def job_create(
    session: Session, settings: Settings, tenant_id: str, body: FineTuningJobCreate
) -> JobCreate:
    """Our job body for an OpenAI one; a 400 naming OpenAI's parameter where it cannot be."""
    hyper = _hyperparameters(body)
    try:
        tracking = report_to_from_integrations(body.integrations or [])
    except RequestError as exc:  # OpenAI's status for a bad parameter
        raise bad(exc.field or "integrations", exc.message) from exc
    base, init_from = _model(session, settings, tenant_id, body.model)
    train = _file(session, tenant_id, body.training_file, "training_file")
    validation = None
    if body.validation_file is not None:
        validation = _file(session, tenant_id, body.validation_file, "validation_file")
    task, columns = _task_and_columns(settings, base, train)
    extra = body.adalora or AdaLoraExtra()
    training: dict[str, Any] = {}
    for ours, value in (
        ("epochs", hyper.n_epochs),
        ("batch_size", hyper.batch_size),
        ("seed", body.seed),
        ("max_length", extra.max_length),
    ):
        if value is not None and value != "auto":
            training[ours] = value
    multiplier = hyper.learning_rate_multiplier
    return JobCreate(
        base_model=base,
        init_from=init_from,
        task=task,  # type: ignore[arg-type]
        dataset_id=train.id,
        validation_dataset_id=validation.id if validation is not None else None,
        columns=columns,
        adalora=extra.adalora,
        training=TrainingParams(**training),
        resources=extra.resources,
        checkpoints=extra.checkpoints,
        learning_rate_multiplier=None if multiplier in (None, "auto") else float(multiplier),
        suffix=body.suffix,
        metadata=dict(body.metadata or {}),
        **tracking,
    )


def submit(
    session: Session,
    settings: Settings,
    tenant_id: str,
    body: FineTuningJobCreate,
    enqueue: Callable[[str], None],
) -> Submission:
    try:
        create = job_create(session, settings, tenant_id, body)
    except ValueError as exc:  # a value JobCreate refuses (pydantic names it)
        raise bad("hyperparameters", str(exc).splitlines()[-1].strip()) from exc
    return submit_job(session, settings, tenant_id, create, None, enqueue)


# --- views ------------------------------------------------------------------------------------


def _seconds(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


def resolved_hyperparameters(job: Job) -> dict[str, Any]:
    """The values that ran, never "auto": epochs (from the update count when the run was set
    by updates), rows per update, and the multiplier on the automatic learning rate."""
    stored = job.hyperparameters or {}
    training = stored.get("training") or {}
    batch = int(training.get("batch_size") or 1) * int(training.get("grad_accum") or 1)
    epochs = training.get("epochs")
    if epochs is None:
        rows = max(1, int(stored.get("num_train_rows") or 1))
        epochs = round(int(stored.get("total_steps") or 0) * batch / rows, 2)
    epochs = int(epochs) if float(epochs).is_integer() else float(epochs)
    multiplier = (job.request or {}).get("learning_rate_multiplier") or 1.0
    return {"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": multiplier}


def _file_id(dataset_id: str | None) -> str | None:
    return to_openai("file", dataset_id) if dataset_id else None


def fine_tuning_job(session: Session, job: Job) -> dict[str, Any]:
    status = JobStatus(job.status)
    owner = model_names.tenant_name(session, job.tenant_id)
    request = job.request or {}
    hyper = resolved_hyperparameters(job)
    error = job.error
    validation = request.get("validation_dataset_id")
    return {
        "id": to_openai("ftjob", job.id),
        "model": model_names.source_name(session, job) or job.base_model,
        "fine_tuned_model": model_names.fine_tuned_model(job, owner)
        if status == JobStatus.SUCCEEDED
        else None,
        "created_at": _seconds(job.created_at),
        "finished_at": _seconds(job.finished_at) if status in FINISHED else None,
        "status": STATUS[status],
        "error": _error(error),
        "hyperparameters": hyper,
        "training_file": _file_id(request.get("dataset_id") or job.dataset_id) or "",
        "validation_file": _file_id(validation),
        "result_files": [result_file_id(job.id)] if status in FINISHED else [],
        "trained_tokens": _trained_tokens(job) if status == JobStatus.SUCCEEDED else None,
        "seed": int(((job.hyperparameters or {}).get("training") or {}).get("seed") or 0),
        "organization_id": job.tenant_id,
        "method": {"type": SUPERVISED, "supervised": {"hyperparameters": hyper}},
        "metadata": dict(job.metadata_) if job.metadata_ else None,
        "integrations": _integrations(request),
        "adalora_job_id": job.id,
    }


def _trained_tokens(job: Job) -> int | None:
    """The tokens of the training rows the run's updates took (whole passes and the part of
    the last), as the worker recorded them; None for a job that finished before it did."""
    value = (job.metrics or {}).get("trained_tokens")
    return int(value) if value is not None else None


def _integrations(request: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A job reporting to W&B, as OpenAI's integrations list shows it."""
    wandb = request.get("wandb")
    if "wandb" not in (request.get("report_to") or []) or not isinstance(wandb, dict):
        return None
    fields = {k: wandb.get(k) for k in ("project", "entity", "name")}
    return [{"type": "wandb", "wandb": {**fields, "tags": list(wandb.get("tags") or [])}}]


def _error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    if not error:
        return None
    return {"code": error.get("code", "error"), "message": error.get("message", ""), "param": None}


def openai_job(session: Session, tenant_id: str, ftjob_id: str) -> Job:
    """The tenant's job behind an "ftjob-…" id, or a 404 (another tenant's reads as absent)."""
    job_id = from_openai("ftjob", ftjob_id)
    job = job_rows.get_job(session, tenant_id, job_id) if job_id else None
    if job is None:
        raise RequestError(404, "not_found", f"fine-tuning job {ftjob_id!r} not found", "id")
    return job


def _event(event: JobEvent, valid_loss: float | None) -> dict[str, Any]:
    data = event.data or {}
    level, kind, extra = "info", "message", None
    if event.kind == EventKind.PROGRESS:
        kind = "metrics"
        loss = data.get("loss")
        extra = {
            "step": data.get("step"),
            "total_steps": data.get("total_steps"),
            "epoch": data.get("epoch"),
            "train_loss": loss,
            "valid_loss": valid_loss,
            "train_mean_token_accuracy": data.get("token_accuracy"),
            "learning_rate": data.get("learning_rate"),
            "budget": data.get("budget"),
        }
        shown = "n/a" if loss is None else f"{loss:.4f}"
        message = f"Step {data.get('step')}/{data.get('total_steps')}: training loss={shown}"
    elif event.kind == EventKind.EVAL:
        metrics = data.get("metrics") or {}
        listed = ", ".join(
            f"{k}={v:.4f}" for k, v in sorted(metrics.items()) if isinstance(v, int | float)
        )
        message = f"Evaluation at step {data.get('step')}: {listed}"
        extra = {"step": data.get("step"), **metrics}
    elif event.kind == EventKind.STATUS:
        message = f"Job status: {data.get('to')}"
    else:
        level = {"error": "error", "warning": "warn"}.get(event.kind, "info")
        message = str(data.get("message") or event.kind)
    return {
        "id": f"ftevent-{event.id}",
        "created_at": _seconds(event.created_at),
        "level": level,
        "message": message,
        "type": kind,
        "data": extra,
    }


def job_events(
    session: Session, job: Job, after: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """A page of the job's events, newest first as OpenAI lists them: those older than the
    ``after`` event. A progress event's ``valid_loss`` is that of the last evaluation before it."""
    before = None
    if after is not None:
        digits = after.removeprefix("ftevent-")
        if not digits.isdigit():
            raise bad("after", f"{after!r} is not an event id")
        before = int(digits)
    rendered: list[dict[str, Any]] = []
    valid_loss = None
    for event in job_rows.events_of_kinds(session, job, tuple(EventKind)):
        if event.kind == EventKind.EVAL:
            valid_loss = (event.data.get("metrics") or {}).get("eval_loss")
        if before is None or event.id < before:
            rendered.append(_event(event, valid_loss))
    rendered.reverse()
    return rendered[:limit], len(rendered) > limit


def _checkpoint(job: Job, owner: str, row: Checkpoint) -> dict[str, Any]:
    metrics = row.metrics or {}
    return {
        "id": to_openai("ftckpt", row.id),
        "created_at": _seconds(row.created_at),
        "fine_tuned_model_checkpoint": model_names.checkpoint_model(job, owner, row.step),
        "fine_tuning_job_id": to_openai("ftjob", job.id),
        "step_number": row.step,
        "metrics": {
            "step": float(row.step),
            "train_loss": metrics.get("train_loss"),
            "train_mean_token_accuracy": metrics.get("train_mean_token_accuracy"),
            "valid_loss": metrics.get("eval_loss"),
            "valid_mean_token_accuracy": metrics.get("eval_mean_token_accuracy"),
        },
    }


def job_checkpoints(
    session: Session, job: Job, after: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """A page of the job's checkpoints, newest first, those older than the ``after`` one."""
    rows = list(reversed(checkpoint_rows.job_checkpoints(session, job.id)))
    if after is not None:
        ours = from_openai("ftckpt", after)
        marks = [i for i, row in enumerate(rows) if row.id == ours]
        if not marks:
            raise bad("after", f"{after!r} is not a checkpoint of this job")
        rows = rows[marks[0] + 1 :]
    owner = model_names.tenant_name(session, job.tenant_id)
    return [_checkpoint(job, owner, r) for r in rows[:limit]], len(rows) > limit
