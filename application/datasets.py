"""Deleting a data set, for every protocol that can (``DELETE /datasets/{id}`` and OpenAI's
``DELETE /v1/files/{id}``): refused while an unfinished job trains on it."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from application.errors import RequestError
from service import datasets as dataset_rows
from service.store import ArtifactStore
from service.tables import Dataset

log = logging.getLogger("adalora.application.datasets")


def delete_dataset(session: Session, store: ArtifactStore, dataset: Dataset, shown: str) -> None:
    """Delete the row (``dataset`` read with lock="update"), then its file. ``shown`` names it
    as the caller did ("dataset 'ds_…'", "file 'file-…'"), for the 409."""
    active = dataset_rows.active_jobs_using(session, dataset.id)
    if active:
        raise RequestError(409, "conflict", f"{shown} is used by {active} unfinished job(s)")
    key = dataset_rows.delete_dataset(session, dataset)
    session.commit()
    try:
        store.delete(key)
    except Exception:  # the row is gone; a leftover file is harmless
        log.warning("could not delete %s from the store", key, exc_info=True)
