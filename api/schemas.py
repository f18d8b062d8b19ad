"""Request and response bodies; declared on every route so the OpenAPI schema is exact."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from application.job_request import TaskName
from application.request_fields import Name, Strict
from service.vocabulary import ArtifactFormat, EventKind, JobStatus, KeyScope

# --- errors -------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable error code.")
    message: str
    field: str | None = Field(None, description="Dotted request field, when one is at fault.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


# --- keys ---------------------------------------------------------------------------------


class KeyCreate(Strict):
    name: Name | None = None
    scope: KeyScope = Field(
        KeyScope.TRAIN,
        description="infer: /infer only; train: data sets, jobs and adapters too; admin: also "
        "the tenant's keys. Never more than the calling key's own scope.",
    )


class KeyOut(BaseModel):
    id: str = Field(description="The key's public id; the secret is never stored.")
    scope: KeyScope
    name: str | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The secret; shown only in this response.")


class KeyList(BaseModel):
    items: list[KeyOut]


# --- tenants (operator only) --------------------------------------------------------------


class TenantCreate(Strict):
    name: Name


class TenantOut(BaseModel):
    id: str
    name: str
    operator: bool
    created_at: datetime
    disabled_at: datetime | None


class TenantCreated(TenantOut):
    key: str = Field(description="The tenant's first (admin) key; shown only in this response.")
    key_id: str


class TenantList(BaseModel):
    items: list[TenantOut]


# --- datasets -----------------------------------------------------------------------------


class DatasetOut(BaseModel):
    id: str
    name: str
    format: Literal["jsonl", "csv", "tsv"]
    header: bool = Field(description="CSV/TSV: the first line named the columns.")
    num_rows: int
    columns: list[str]
    column_types: dict[str, str]
    sha256: str
    size_bytes: int
    created_at: datetime


class DatasetList(BaseModel):
    items: list[DatasetOut]
    next_cursor: str | None


# --- jobs (the request body, JobCreate, is application.job_request's) ---------------------


class Progress(BaseModel):
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None


class Budget(BaseModel):
    initial: int | None = None
    target: int | None = None
    current: int | None = None


class JobError(BaseModel):
    code: str
    message: str


class JobOut(BaseModel):
    id: str
    name: str | None
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    base_model: str
    task: TaskName
    dataset_id: str | None
    validation_dataset_id: str | None
    hyperparameters: dict[str, Any]
    progress: Progress
    metrics: dict[str, Any]
    budget: Budget
    adapter_id: str | None
    error: JobError | None
    metadata: dict[str, Any]


class JobList(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class SchedulePoint(BaseModel):
    step: int
    budget: int


class ScheduleOut(BaseModel):
    """The cubic budget schedule the job's allocator follows, in triplets kept after each
    update; ``points`` stay empty until training has reported the budget's start and end."""

    total_steps: int
    t_init: int
    final_mask_step: int
    initial: int | None
    target: int | None
    points: list[SchedulePoint]


class EventOut(BaseModel):
    id: int
    kind: EventKind
    data: dict[str, Any]
    created_at: datetime


class EventList(BaseModel):
    items: list[EventOut]
    next_after: int | None = Field(description="Pass as ?after= to get the following events.")


# --- adapters -----------------------------------------------------------------------------


class CheckpointOut(BaseModel):
    id: str = Field(description="Serve it by this id on /infer and /v1/* like an adapter id.")
    job_id: str
    step: int
    created_at: datetime
    base_model: str
    metrics: dict[str, Any] = Field(
        description="train_loss and the evaluation (eval_*) last run at or before this step."
    )
    budget: dict[str, Any] = Field(description="The rank budget: current, initial, target.")
    size_bytes: int


class CheckpointList(BaseModel):
    items: list[CheckpointOut]


class AdapterOut(BaseModel):
    id: str
    name: str | None
    job_id: str | None
    base_model: str
    task: TaskName
    labels: list[Any] | None
    init_r: int
    target_r: int
    total_rank: int
    trainable_params: int
    size_bytes: int
    sha256: str
    formats: list[ArtifactFormat]
    metrics: dict[str, Any]
    status: Literal["ready", "corrupt"]
    created_at: datetime
    source: Literal["train", "import"] = Field(
        description="train: a job produced it; import: POST /adapters/import"
    )


class AdapterList(BaseModel):
    items: list[AdapterOut]
    next_cursor: str | None


class RankModule(BaseModel):
    name: str
    layer: int | None
    kind: str
    rank: int


class RankHistoryPoint(BaseModel):
    step: int
    budget: int
    ranks: dict[str, int]


class FinalBudget(BaseModel):
    initial: int | None = None
    target: int | None = None
    final: int | None = None


class RanksOut(BaseModel):
    init_r: int
    target_r: int
    budget: FinalBudget
    modules: list[RankModule]
    history: list[RankHistoryPoint]


# --- misc ---------------------------------------------------------------------------------


class ModelOut(BaseModel):
    name: str


class ModelList(BaseModel):
    items: list[ModelOut]


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    checks: dict[str, str]
    device: str | None = Field(None, description="Where /infer runs, e.g. cpu or cuda:0.")
    dtype: str | None = Field(None, description="The serving dtype of the base models.")


class InferParameters(Strict):
    max_new_tokens: int | None = Field(None, description="LM adapters: tokens to generate.")
    temperature: float | None = Field(None, description="0 or absent: greedy decoding.")
    top_p: float | None = Field(None, description="Nucleus sampling mass (with temperature).")
    truncate: bool = Field(True, description="Cut inputs longer than the adapter's max_length.")


class InferRequest(Strict):
    adapter_id: str | None = Field(None, description="null: the plain base model.")
    base_model: str | None = Field(
        None, description="Only with adapter_id null; defaults to the service's default base."
    )
    inputs: list[str | list[str]] = Field(
        ..., min_length=1, description="Texts, or [text, pair] for pair classification."
    )
    parameters: InferParameters = Field(default_factory=InferParameters)


class InferResponse(BaseModel):
    adapter_id: str | None
    outputs: list[dict[str, Any]]
