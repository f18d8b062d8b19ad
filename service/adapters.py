"""Adapter rows: what a finished job produced, with its rank pattern and stored formats."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.pagination import Page, paginate
from service.tables import Adapter, Job, utcnow
from service.vocabulary import ArtifactFormat


def create_adapter(
    session: Session,
    *,
    adapter_id: str,
    tenant_id: str,
    job_id: str | None,
    base_model: str,
    task: str,
    labels: list[Any] | None,
    init_r: int,
    target_r: int,
    total_rank: int,
    trainable_params: int,
    formats: dict[str, dict[str, Any]],
    rank_info: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    name: str | None = None,
    source: str = "train",
    idempotency: tuple[str, str] | None = None,
) -> Adapter:
    """Insert the row once its artifacts are stored; ``formats`` must include "peft" with
    storage_key, sha256 and size_bytes. ``idempotency`` is an import's (key, request hash)."""
    unknown = set(formats) - set(ArtifactFormat)
    if unknown:
        raise ValueError(f"unknown adapter formats {sorted(unknown)}")
    peft = formats[ArtifactFormat.PEFT]
    adapter = Adapter(
        id=adapter_id,
        tenant_id=tenant_id,
        job_id=job_id,
        name=name,
        base_model=base_model,
        task=task,
        labels=labels,
        init_r=init_r,
        target_r=target_r,
        total_rank=total_rank,
        trainable_params=trainable_params,
        size_bytes=int(peft["size_bytes"]),
        sha256=str(peft["sha256"]),
        formats=formats,
        metrics=metrics or {},
        rank_info=rank_info,
        status="ready",
        created_at=utcnow(),
        source=source,
        idempotency_key=idempotency[0] if idempotency else None,
        request_hash=idempotency[1] if idempotency else None,
    )
    session.add(adapter)
    session.flush()
    return adapter


def get_adapter(session: Session, tenant_id: str, adapter_id: str) -> Adapter | None:
    """The tenant's adapter by id or, failing that, by name (vLLM's users address adapters by
    name); another tenant's id or name reads as absent."""
    adapter = session.get(Adapter, adapter_id)
    if adapter is not None and adapter.tenant_id == tenant_id:
        return adapter
    return find_by_name(session, tenant_id, adapter_id)


def find_by_name(session: Session, tenant_id: str, name: str) -> Adapter | None:
    stmt = select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.name == name)
    return session.scalars(stmt).one_or_none()


def find_by_idempotency_key(session: Session, tenant_id: str, key: str) -> Adapter | None:
    stmt = select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.idempotency_key == key)
    return session.scalars(stmt).one_or_none()


def list_adapters(
    session: Session, tenant_id: str, limit: int = 50, cursor: str | None = None
) -> Page[Adapter]:
    stmt = select(Adapter).where(Adapter.tenant_id == tenant_id)
    return paginate(session, stmt, Adapter.id, limit, cursor)


def servable_adapters(session: Session, tenant_id: str) -> list[Adapter]:
    """Every adapter of the tenant that can be served (not marked corrupt), newest first."""
    stmt = (
        select(Adapter)
        .where(Adapter.tenant_id == tenant_id, Adapter.status != "corrupt")
        .order_by(Adapter.id.desc())
    )
    return list(session.scalars(stmt))


def mark_corrupt(session: Session, adapter_id: str) -> None:
    session.execute(
        update(Adapter)
        .where(Adapter.id == adapter_id)
        .values(status="corrupt")
        .execution_options(synchronize_session=False)
    )


def delete_adapter(session: Session, adapter: Adapter) -> list[str]:
    """Delete the row and unlink it from its job; returns the storage keys to remove after
    the caller commits (a row never points at deleted files)."""
    keys = [info["storage_key"] for info in adapter.formats.values()]
    session.execute(
        update(Job)
        .where(Job.adapter_id == adapter.id)
        .values(adapter_id=None)
        .execution_options(synchronize_session=False)
    )
    session.delete(adapter)
    session.flush()
    return keys
