"""Dataset rows: a dataset cannot be deleted out from under a job that is being submitted."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service import datasets, jobs, tenants
from service.datasets_io import DatasetSummary


def make_dataset(session: Session) -> tuple[str, str]:
    tenant = tenants.create_tenant(session, "t")
    summary = DatasetSummary("csv", 2, ["text"], {"text": "string"}, {"text": ["a", "b"]})
    row = datasets.create_dataset(
        session,
        dataset_id="ds_1",
        tenant_id=tenant.id,
        name="d.csv",
        summary=summary,
        sha256="0" * 64,
        size_bytes=10,
        storage_key="datasets/t/ds_1/data.csv",
    )
    session.commit()
    return tenant.id, row.id


@pytest.mark.parametrize("db_backend", ["postgres"])
def test_submission_lock_makes_a_concurrent_delete_see_the_job(
    sessions: sessionmaker[Session],
) -> None:
    with sessions() as setup:
        tenant_id, dataset_id = make_dataset(setup)
    seen: dict[str, int] = {}

    def delete_attempt() -> None:
        with sessions() as other:
            assert datasets.get_dataset(other, tenant_id, dataset_id, lock="update") is not None
            seen["active"] = datasets.active_jobs_using(other, dataset_id)
            other.rollback()

    with sessions() as submit:
        assert datasets.get_dataset(submit, tenant_id, dataset_id, lock="share") is not None
        jobs.create_job(
            submit,
            tenant_id=tenant_id,
            base_model="m",
            task="causal-lm",
            dataset_id=dataset_id,
            validation_dataset_id=None,
            request={},
            hyperparameters={},
            request_hash="h",
        )
        deleter = threading.Thread(target=delete_attempt)
        deleter.start()
        time.sleep(0.5)  # give the deleter every chance to read before the commit
        submit.commit()
    deleter.join(timeout=30)
    assert seen == {"active": 1}


def test_other_tenant_cannot_read(db_session: Session) -> None:
    tenant_id, dataset_id = make_dataset(db_session)
    assert datasets.get_dataset(db_session, tenant_id, dataset_id) is not None
    assert datasets.get_dataset(db_session, "ten_other", dataset_id) is None
    assert datasets.list_datasets(db_session, "ten_other").items == []
