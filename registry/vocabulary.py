"""The names every part shares: job statuses and event kinds. Defined once, imported everywhere
(the API's schemas, the state machine, the worker, the CLI); free of SQL and torch."""

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
