"""Checkpoint rows: a job's adapter at a step, and which of them a job keeps.

The keep policy (``checkpoints.keep`` of a job) is one rule, :func:`retained`: the newest
``keep`` and the best by evaluation loss. The worker applies it as each checkpoint is recorded,
in the same transaction, and deletes the artifacts of the rows it dropped once that commits.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.ids import new_id
from service.tables import Checkpoint, utcnow

EVAL_LOSS = "eval_loss"


def checkpoint_id() -> str:
    return new_id("ckpt")


def is_checkpoint_id(value: str) -> bool:
    return value.startswith("ckpt_")


def record_checkpoint(session: Session, tenant_id: str, job_id: str, row: dict[str, Any]) -> None:
    """Insert the checkpoint ``row`` (a re-delivered job that checkpoints a step again replaces
    the earlier row of that step); flushed, not committed."""
    existing = session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step == row["step"])
    ).first()
    if existing is not None:
        session.delete(existing)
        session.flush()
    session.add(
        Checkpoint(
            id=row["id"],
            job_id=job_id,
            tenant_id=tenant_id,
            step=row["step"],
            base_model=row["base_model"],
            task=row["task"],
            metrics=row["metrics"],
            budget=row["budget"],
            formats=row["formats"],
            size_bytes=row["size_bytes"],
            created_at=utcnow(),
        )
    )
    session.flush()


def job_checkpoints(session: Session, job_id: str) -> list[Checkpoint]:
    """The job's checkpoints, oldest step first."""
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)
    return list(session.scalars(stmt))


def get_checkpoint(session: Session, tenant_id: str, ckpt_id: str) -> Checkpoint | None:
    """The tenant's checkpoint; another tenant's id reads as absent."""
    row = session.get(Checkpoint, ckpt_id)
    return row if row is not None and row.tenant_id == tenant_id else None


def checkpoint_at(session: Session, job_id: str, step: int) -> Checkpoint | None:
    stmt = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.step == step)
    return session.scalars(stmt).first()


def retained(rows: list[Checkpoint], keep: int | None) -> set[str]:
    """Ids a job keeps: all without a policy; else the newest ``keep`` and the one with the
    lowest evaluation loss (a checkpoint without one is never "best")."""
    if keep is None:
        return {row.id for row in rows}
    ordered = sorted(rows, key=lambda row: row.step)
    kept = {row.id for row in ordered[-keep:]} if keep > 0 else set()
    scored = [row for row in ordered if isinstance((row.metrics or {}).get(EVAL_LOSS), int | float)]
    if scored:
        kept.add(min(scored, key=lambda row: (row.metrics[EVAL_LOSS], -row.step)).id)
    return kept


def prune(session: Session, job_id: str, keep: int | None) -> list[str]:
    """Delete the rows the policy no longer keeps; the storage keys their artifacts had (to
    delete once this commits)."""
    rows = job_checkpoints(session, job_id)
    kept = retained(rows, keep)
    keys: list[str] = []
    for row in rows:
        if row.id not in kept:
            keys.extend(info["storage_key"] for info in (row.formats or {}).values())
            session.delete(row)
    session.flush()
    return keys


def referenced_keys(session: Session) -> set[str]:
    """Every artifact a checkpoint row names (the store's garbage collector keeps them)."""
    keys: set[str] = set()
    for formats in session.scalars(select(Checkpoint.formats)):
        keys.update(info["storage_key"] for info in (formats or {}).values())
    return keys
