"""Dataset rows: create, read, list and delete, always scoped to one tenant."""

from __future__ import annotations

from typing import Literal

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from service.datasets_io import DatasetSummary
from service.lifecycle import ACTIVE
from service.pagination import Page, paginate
from service.tables import Dataset, Job, utcnow


def create_dataset(
    session: Session,
    *,
    dataset_id: str,
    tenant_id: str,
    name: str,
    summary: DatasetSummary,
    sha256: str,
    size_bytes: int,
    storage_key: str,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> Dataset:
    """Insert the row (flushes: a clash on the tenant's Idempotency-Key raises here)."""
    dataset = Dataset(
        id=dataset_id,
        tenant_id=tenant_id,
        name=name,
        format=summary.format,
        num_rows=summary.num_rows,
        columns=summary.columns,
        column_types=summary.column_types,
        label_values=summary.label_values,
        learned_chars=summary.learned_chars,
        sha256=sha256,
        size_bytes=size_bytes,
        storage_key=storage_key,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        has_header=summary.header,
        created_at=utcnow(),
    )
    session.add(dataset)
    session.flush()
    return dataset


def find_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Dataset | None:
    stmt = select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.idempotency_key == key)
    return session.scalars(stmt).one_or_none()


def get_dataset(
    session: Session,
    tenant_id: str,
    dataset_id: str,
    lock: Literal["share", "update"] | None = None,
) -> Dataset | None:
    """The tenant's dataset; another tenant's id reads as absent.

    ``lock`` takes a row lock until commit (PostgreSQL; SQLite serializes writers anyway): a job
    submission holds "share" on its datasets and a deletion takes "update", so a dataset cannot
    vanish under a job that is being created.
    """
    options = {"read": lock == "share"} if lock else None
    dataset = session.get(
        Dataset, dataset_id, with_for_update=options, populate_existing=bool(lock)
    )
    return dataset if dataset is not None and dataset.tenant_id == tenant_id else None


def list_datasets(
    session: Session, tenant_id: str, limit: int = 50, cursor: str | None = None
) -> Page[Dataset]:
    stmt = select(Dataset).where(Dataset.tenant_id == tenant_id)
    return paginate(session, stmt, Dataset.id, limit, cursor)


def active_jobs_using(session: Session, dataset_id: str) -> int:
    """Jobs not yet finished that read this dataset (training or validation)."""
    stmt = (
        select(func.count())
        .select_from(Job)
        .where(or_(Job.dataset_id == dataset_id, Job.validation_dataset_id == dataset_id))
        .where(Job.status.in_([status.value for status in ACTIVE]))
    )
    return int(session.scalar(stmt) or 0)


def delete_dataset(session: Session, dataset: Dataset) -> str:
    """Delete the row (the caller commits, then removes the returned storage key)."""
    key = dataset.storage_key
    session.delete(dataset)
    session.flush()
    return key
