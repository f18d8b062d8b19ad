"""The names every part shares: job statuses, event kinds, artifact formats and the training
queue. Defined once, imported everywhere (the API's schemas, the state machine, the worker, the
CLI); free of SQL and torch. Task kinds belong to the core: ``adalora_core.tasks``."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    UPLOADING = "uploading"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset(JobStatus) - TERMINAL


class EventKind(StrEnum):
    STATUS = "status"
    PROGRESS = "progress"
    EVAL = "eval"
    ERROR = "error"
    LOG = "log"
    WARNING = "warning"  # e.g. a schedule too short for the allocator to act


class ArtifactFormat(StrEnum):
    """The downloads a finished adapter has: our PEFT bundle, a plain LoRA export, and (when
    the job asked for it) the base with the adapter merged in."""

    PEFT = "peft"
    LORA = "lora"
    MERGED = "merged"


class OutputMode(StrEnum):
    """What a job publishes besides the PEFT bundle and the LoRA export."""

    UNMERGED = "unmerged"
    MERGED = "merged"


class KeyScope(StrEnum):
    """What an API key may do, each scope including the ones below it."""

    INFER = "infer"  # POST /infer and reading adapters' metadata
    TRAIN = "train"  # + data sets, jobs, adapter downloads and deletion
    ADMIN = "admin"  # + the tenant's keys; on the operator tenant, every tenant too


SCOPE_POWER = {KeyScope.INFER: 0, KeyScope.TRAIN: 1, KeyScope.ADMIN: 2}


def scope_allows(held: str, needed: KeyScope) -> bool:
    return SCOPE_POWER[KeyScope(held)] >= SCOPE_POWER[needed]


# The API sends training jobs by name; the worker registers its task under the same name.
TRAIN_TASK = "adalora.train_job"
TRAINING_QUEUE = "training"
