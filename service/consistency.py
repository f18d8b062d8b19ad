"""The store and the rows agree: which stored objects no row points to, and which rows point at
objects that are gone; and garbage collection of the first kind.

Referenced: every data set's file, every adapter's files, every checkpoint row's adapter, every
job's TensorBoard event files, and the training state of every job that may still resume (queued
or leased). Everything else in the store is an orphan: the training state of a finished, failed
or cancelled job, the zips of a worker killed while uploading, the file of an upload whose API
process died. A worker still writing makes orphans for a moment (its zips exist before its
adapter row commits), so collection only takes orphans older than a grace period.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import checkpoints
from service.store.base import ArtifactStore, StoredObject
from service.tables import Adapter, Dataset, Job
from service.vocabulary import TERMINAL

# A worker uploads its adapter zips, then commits the row; a checkpoint is uploaded, then its
# key recorded. Far longer than either takes.
DEFAULT_GRACE_S = 3600.0


@dataclass
class StoreReport:
    orphans: list[StoredObject] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # keys rows point to, absent from the store

    @property
    def consistent(self) -> bool:
        return not self.orphans and not self.missing


def referenced_keys(session: Session) -> set[str]:
    keys = set(session.scalars(select(Dataset.storage_key)))
    for formats in session.scalars(select(Adapter.formats)):
        keys.update(info["storage_key"] for info in (formats or {}).values())
    keys.update(checkpoints.referenced_keys(session))
    live = [s.value for s in TERMINAL]
    keys.update(
        key
        for key in session.scalars(
            select(Job.checkpoint_key).where(
                Job.checkpoint_key.is_not(None), Job.status.not_in(live)
            )
        )
        if key
    )
    for tracking in session.scalars(select(Job.tracking).where(Job.tracking.is_not(None))):
        stored = (tracking or {}).get("tensorboard") or {}
        if stored.get("key"):
            keys.add(stored["key"])
    return keys


def check_store(session: Session, store: ArtifactStore) -> StoreReport:
    referenced = referenced_keys(session)
    stored = list(store.list_objects())
    present = {obj.key for obj in stored}
    return StoreReport(
        orphans=[obj for obj in stored if obj.key not in referenced],
        missing=sorted(referenced - present),
    )


def collect_garbage(
    session: Session,
    store: ArtifactStore,
    grace_s: float = DEFAULT_GRACE_S,
    now: float | None = None,
) -> list[str]:
    """Delete orphans last written more than ``grace_s`` ago; the keys deleted."""
    cutoff = (time.time() if now is None else now) - grace_s
    report = check_store(session, store)
    deleted = []
    for obj in report.orphans:
        if obj.modified_at < cutoff:
            store.delete(obj.key)
            deleted.append(obj.key)
    return deleted
