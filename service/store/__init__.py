"""Artifact storage: datasets, adapter zips and checkpoints, addressed by '/'-separated keys.

Keys: datasets/<tenant>/<dataset_id>/data.<ext>, adapters/<tenant>/<adapter_id>/<format>.zip,
checkpoints/<job_id>/ckpt-<step>.zip (a run's training state, while it may resume),
checkpoints/<job_id>/step-<step>/peft.zip (the adapter at that step, while its row lives) and
tensorboard/<job_id>/<attempt>-<step>.zip (a job's TensorBoard event files: a new key for every
snapshot, so a key's bytes never change under its recorded sha256); helpers below build them.
"""

from __future__ import annotations

from service.settings import Settings
from service.store.base import (
    ArtifactStore,
    ChecksumMismatch,
    InvalidKey,
    NotFound,
    StoredObject,
    StoreError,
    StoreUnavailable,
    validate_key,
)
from service.store.local import LocalStore
from service.store.s3 import S3Store

__all__ = [
    "ArtifactStore",
    "ChecksumMismatch",
    "InvalidKey",
    "LocalStore",
    "NotFound",
    "S3Store",
    "StoreError",
    "StoreUnavailable",
    "StoredObject",
    "adapter_key",
    "adapter_prefix",
    "checkpoint_bundle_key",
    "checkpoint_key",
    "checkpoint_prefix",
    "dataset_key",
    "get_store",
    "tensorboard_key",
    "tensorboard_prefix",
    "validate_key",
]


def get_store(settings: Settings) -> LocalStore | S3Store:
    if settings.store_backend == "s3":
        if not settings.s3_bucket:
            raise ValueError("store_backend 's3' needs ADALORA_S3_BUCKET")
        return S3Store(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
        )
    assert settings.store_dir is not None
    return LocalStore(settings.store_dir)


def dataset_key(tenant_id: str, dataset_id: str, fmt: str) -> str:
    return f"datasets/{tenant_id}/{dataset_id}/data.{fmt}"


def adapter_prefix(tenant_id: str, adapter_id: str) -> str:
    return f"adapters/{tenant_id}/{adapter_id}"


def adapter_key(tenant_id: str, adapter_id: str, fmt: str) -> str:
    return f"{adapter_prefix(tenant_id, adapter_id)}/{fmt}.zip"


def checkpoint_prefix(job_id: str) -> str:
    return f"checkpoints/{job_id}"


def checkpoint_key(job_id: str, step: int) -> str:
    return f"{checkpoint_prefix(job_id)}/ckpt-{step}.zip"


def checkpoint_bundle_key(job_id: str, step: int, fmt: str) -> str:
    return f"{checkpoint_prefix(job_id)}/step-{step}/{fmt}.zip"


def tensorboard_prefix(job_id: str) -> str:
    return f"tensorboard/{job_id}"


def tensorboard_key(job_id: str, attempt: int, step: int) -> str:
    return f"{tensorboard_prefix(job_id)}/{attempt}-{step}.zip"
