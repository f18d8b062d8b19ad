"""The store against the rows: orphans and missing objects are found; collection takes only
old orphans, never what a row points to or what a worker may still be writing."""

from __future__ import annotations

import os
import time
from typing import Any

from sqlalchemy.orm import Session

from service import tenants
from service.adapters import create_adapter
from service.consistency import check_store, collect_garbage
from service.datasets import create_dataset
from service.datasets_io import DatasetSummary
from service.lifecycle import transition
from service.store import LocalStore
from tests.service.test_jobs import make_job


def put(store: LocalStore, key: str, age_s: float = 7200.0) -> str:
    sha, _ = store.put_stream(key, [key.encode()])
    then = time.time() - age_s
    os.utime(store.path_for(key), (then, then))
    return sha


def job_with_checkpoint(session: Session, tenant_id: str, store: LocalStore, status: str) -> str:
    job = make_job(session, tenant_id)
    job.checkpoint_key = f"checkpoints/{job.id}/ckpt-4.zip"
    put(store, job.checkpoint_key)
    transition(job, "running")
    if status == "failed":
        transition(job, "failed")
    session.commit()
    return job.checkpoint_key


def test_orphans_and_missing_objects_are_found_and_only_old_orphans_collected(
    db_session: Session, store: LocalStore
) -> None:
    tenant = tenants.create_tenant(db_session, "acme")
    summary = DatasetSummary("csv", 1, ["text"], {"text": "string"}, {"text": ["a"]})
    kept: list[str] = []
    for index, present in ((1, True), (2, False)):
        key = f"datasets/{tenant.id}/ds_{index}/data.csv"
        sha = put(store, key) if present else "0" * 64
        create_dataset(
            db_session,
            dataset_id=f"ds_{index}",
            tenant_id=tenant.id,
            name="d",
            summary=summary,
            sha256=sha,
            size_bytes=1,
            storage_key=key,
        )
        if present:
            kept.append(key)
    formats: dict[str, Any] = {}
    for fmt in ("peft", "lora"):
        key = f"adapters/{tenant.id}/ad_1/{fmt}.zip"
        formats[fmt] = {"storage_key": key, "sha256": put(store, key), "size_bytes": 1}
        kept.append(key)
    create_adapter(
        db_session,
        adapter_id="ad_1",
        tenant_id=tenant.id,
        job_id=None,
        base_model="m",
        task="classification",
        labels=None,
        init_r=4,
        target_r=2,
        total_rank=2,
        trainable_params=1,
        formats=formats,
        rank_info={},
    )
    db_session.commit()
    kept.append(job_with_checkpoint(db_session, tenant.id, store, "running"))  # may resume
    failed_checkpoint = job_with_checkpoint(db_session, tenant.id, store, "failed")
    killed_upload = put(store, f"adapters/{tenant.id}/ad_killed/peft.zip") and (
        f"adapters/{tenant.id}/ad_killed/peft.zip"
    )
    being_written = f"adapters/{tenant.id}/ad_uploading/peft.zip"
    put(store, being_written, age_s=5)  # a worker's zip whose row is about to commit

    report = check_store(db_session, store)
    assert sorted(o.key for o in report.orphans) == sorted(
        [failed_checkpoint, killed_upload, being_written]
    )
    assert report.missing == [f"datasets/{tenant.id}/ds_2/data.csv"]
    assert not report.consistent

    deleted = collect_garbage(db_session, store, grace_s=3600)
    assert sorted(deleted) == sorted([failed_checkpoint, killed_upload])
    remaining = {o.key for o in store.list_objects()}
    assert remaining == {*kept, being_written}
