"""Checkpoints never outlive their use: one replaced while the database was unreachable is
deleted once the row records its successor, and a finished job leaves no training state behind,
even one a killed run uploaded but never recorded (the adapters of its checkpoint rows stay)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy.exc import OperationalError

import worker.callbacks as callbacks_module
from service.checkpoints import job_checkpoints
from service.leases import lease_job
from service.store import LocalStore, checkpoint_key, checkpoint_prefix
from service.store.base import StoreError
from worker.callbacks import JobCallbacks
from worker.runner import run_job

OWNER = "w1@test"


def _stored(store, job_id: str) -> list[str]:
    return sorted(obj.key for obj in store.list_objects(checkpoint_prefix(job_id)))


def _checkpoint_file(tmp_path: Path, step: int) -> Path:
    path = tmp_path / f"ckpt-{step}.zip"
    path.write_bytes(f"state at step {step}".encode())
    return path


def _leased_callbacks(world, sessions, store) -> tuple[JobCallbacks, str]:
    job_id = world.submit()
    with sessions() as session:
        assert lease_job(session, job_id, OWNER, 60.0) is not None
        session.commit()
    heartbeat = SimpleNamespace(lost=SimpleNamespace(is_set=lambda: False))
    return JobCallbacks(sessions, store, job_id, OWNER, heartbeat, {}, 0.0), job_id


class _UndeletableStore(LocalStore):
    def delete(self, key: str) -> None:
        raise StoreError(f"{key}: permission denied")


def test_a_checkpoint_that_cannot_be_deleted_does_not_stop_the_run(
    world, sessions, settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    callbacks, job_id = _leased_callbacks(world, sessions, _UndeletableStore(settings.store_dir))
    callbacks.on_checkpoint(5, _checkpoint_file(tmp_path, 5))
    callbacks.on_checkpoint(10, _checkpoint_file(tmp_path, 10))
    assert world.job(job_id).checkpoint_key == checkpoint_key(job_id, 10)
    assert "could not delete checkpoint" in caplog.text


def test_a_checkpoint_replaced_during_an_outage_goes_once_the_row_moves_on(
    world, sessions, store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    callbacks, job_id = _leased_callbacks(world, sessions, store)
    callbacks.on_checkpoint(5, _checkpoint_file(tmp_path, 5))
    assert _stored(store, job_id) == [checkpoint_key(job_id, 5)]

    real_write = callbacks_module.write_progress
    down = {"on": True}

    def flaky_write(*args, **kwargs):
        if down["on"]:
            raise OperationalError("SELECT", {}, Exception("connection refused"))
        return real_write(*args, **kwargs)

    monkeypatch.setattr(callbacks_module, "write_progress", flaky_write)
    callbacks.on_checkpoint(10, _checkpoint_file(tmp_path, 10))
    # The row still names step 5, so step 5 must stay until the write lands.
    assert _stored(store, job_id) == [checkpoint_key(job_id, 10), checkpoint_key(job_id, 5)]

    down["on"] = False
    monkeypatch.setattr(callbacks, "_retry_at", float("-inf"))
    callbacks.on_checkpoint(15, _checkpoint_file(tmp_path, 15))
    assert _stored(store, job_id) == [checkpoint_key(job_id, 15)]
    assert world.job(job_id).checkpoint_key == checkpoint_key(job_id, 15)


def test_a_finished_job_leaves_no_checkpoint_behind(world, settings, sessions, store) -> None:
    job_id = world.submit(max_steps=12, checkpoint_every=4)
    # What a run killed between uploading a checkpoint and recording it leaves: no row names it.
    stray = checkpoint_key(job_id, 999)
    store.put_stream(stray, [b"never recorded"])
    outcome = run_job(job_id, settings, sessions, store)
    assert outcome.status == "succeeded", outcome
    # What stays is the adapter of each checkpoint row (kept to serve, download or continue
    # from); every training state went, the stray one too.
    with sessions() as session:
        kept = sorted(
            info["storage_key"]
            for row in job_checkpoints(session, job_id)
            for info in row.formats.values()
        )
    assert [c for c in kept if c.endswith("/peft.zip")] == kept and len(kept) == 2
    assert _stored(store, job_id) == kept
    assert world.job(job_id).checkpoint_key is not None  # checkpoints were made, then dropped
