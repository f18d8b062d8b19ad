"""The train_job task run in-process on SQLite + a local store with a tiny BERT."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from adalora_core.formats.bundle import read_adapter
from service.jobs import request_cancel
from service.leases import lease_job
from service.settings import Settings
from service.store import LocalStore
from service.tables import Adapter, Job, JobEvent, utcnow
from worker.reconciler import reconcile_once
from worker.runner import run_job


def events(world, job_id: str, kind: str) -> list[dict]:
    with world.sessions() as session:
        rows = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.kind == kind)
            .order_by(JobEvent.id)
        ).all()
        return [r.data for r in rows]


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_job_succeeds_and_publishes_every_format(world, settings, sessions, store) -> None:
    job_id = world.submit()
    outcome = run_job(job_id, settings, sessions, store)
    assert outcome.status == "succeeded"
    job = world.job(job_id)
    assert job.status == "succeeded" and job.adapter_id == outcome.adapter_id
    assert job.progress["step"] == 12 and job.lease_owner is None
    assert [e["to"] for e in events(world, job_id, "status")] == [
        "queued",
        "running",
        "uploading",
        "succeeded",
    ]
    assert len(events(world, job_id, "progress")) == 12  # interval 0: one per update
    with sessions() as session:
        adapter = session.get(Adapter, job.adapter_id)
    assert set(adapter.formats) == {"peft", "lora", "merged"}
    modules = adapter.rank_info["modules"]
    assert sum(m["rank"] for m in modules) == adapter.total_rank
    assert adapter.rank_info["budget"]["final"] == adapter.total_rank
    assert adapter.total_rank <= adapter.rank_info["budget"]["target"]
    assert all({"name", "layer", "kind", "rank"} <= set(m) for m in modules)
    assert adapter.labels == ["negative", "positive"]
    for name, info in adapter.formats.items():
        data = store.open_read(info["storage_key"], info["sha256"])  # checksum verified
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        assert "adapter_config.json" in names or "config.json" in names, (name, names)
    weights = read_adapter(store.open_read(adapter.formats["peft"]["storage_key"]))
    assert weights.total_rank == adapter.total_rank
    # The bundle names its base as registered ("tiny"), never the worker's path to it.
    assert weights.meta.base_model == adapter.base_model == "tiny"
    assert settings.base_models["tiny"] not in str(weights.meta)


def test_a_second_delivery_does_nothing(world, settings, sessions, store) -> None:
    job_id = world.submit(max_steps=6)
    assert run_job(job_id, settings, sessions, store).status == "succeeded"
    assert run_job(job_id, settings, sessions, store).status == "skipped"
    with sessions() as session:
        assert len(session.scalars(select(Adapter)).all()) == 1


def test_live_lease_blocks_a_second_worker(world, settings, sessions) -> None:
    job_id = world.submit()
    with sessions() as session:
        assert lease_job(session, job_id, "worker-a", 60) is not None
        assert lease_job(session, job_id, "worker-b", 60) is None
        # An expired lease can be taken over.
        session.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
        session.commit()
        assert lease_job(session, job_id, "worker-b", 60).lease_owner == "worker-b"


def test_cancel_mid_run_stops_within_a_step(world, settings, sessions, store) -> None:
    job_id = world.submit(max_steps=400)
    result: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: result.update(o=run_job(job_id, settings, sessions, store))
    )
    thread.start()
    wait_for(lambda: (world.job(job_id).progress or {}).get("step", 0) >= 3)
    with sessions() as session:
        job = session.get(Job, job_id)
        request_cancel(session, job)
        session.commit()
        step_at_cancel = session.get(Job, job_id, populate_existing=True).progress["step"]
    thread.join(60)
    assert result["o"].status == "cancelled"
    job = world.job(job_id)
    assert job.status == "cancelled" and job.adapter_id is None
    assert job.progress["step"] <= step_at_cancel + 2
    assert [e["to"] for e in events(world, job_id, "status")][-2:] == ["cancelling", "cancelled"]


def test_corrupt_dataset_fails_with_a_clear_error(world, settings, sessions, store) -> None:
    job_id = world.submit()
    store.path_for(world.dataset_key).write_text("text,label\nchanged,positive\n")
    assert run_job(job_id, settings, sessions, store).status == "failed"
    job = world.job(job_id)
    assert job.error["code"] == "dataset_corrupt"
    assert "Traceback" not in job.error["message"]


def test_a_missing_dataset_file_fails_without_naming_the_storage_key(
    world, settings, sessions, store
) -> None:
    job_id = world.submit()
    store.delete(world.dataset_key)
    assert run_job(job_id, settings, sessions, store).status == "failed"
    error = world.job(job_id).error
    assert error["code"] == "dataset_unreadable"
    assert world.dataset_key not in error["message"] and "datasets/" not in error["message"]


def test_running_out_of_device_memory_fails_with_its_own_code_and_advice(
    world, settings, sessions, store, monkeypatch
) -> None:
    import torch

    import adalora_core.trainer

    def oom(**_: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(adalora_core.trainer, "train", oom)
    job_id = world.submit()
    assert run_job(job_id, settings, sessions, store).status == "failed"
    error = world.job(job_id).error
    assert error["code"] == "out_of_memory"
    assert "batch_size" in error["message"] and "grad_accum" in error["message"]


def test_unknown_base_model_fails(world, settings, sessions, store, tiny_model) -> None:
    other = Settings(home=settings.home, base_models={"elsewhere": str(tiny_model)})
    job_id = world.submit()
    assert run_job(job_id, other, sessions, store).status == "failed"
    assert world.job(job_id).error["code"] == "unknown_base_model"


def test_reconciler_requeues_a_lost_job_which_resumes_from_its_checkpoint(
    world, settings, sessions, store: LocalStore
) -> None:
    job_id = world.submit(max_steps=40, checkpoint_every=3)
    first: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: first.update(o=run_job(job_id, settings, sessions, store, owner="w1"))
    )
    thread.start()
    wait_for(lambda: world.job(job_id).checkpoint_key is not None)
    # The worker looks dead: its lease is in the past. The reconciler takes the job back.
    with sessions() as session:
        session.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
        session.commit()
        sent: list[str] = []
        report = reconcile_once(session, settings, sent.append)
    assert report.requeued == [job_id] and sent == [job_id]
    thread.join(60)
    assert first["o"].status == "lost"  # the old run noticed and stopped
    job = world.job(job_id)
    assert job.status == "queued"
    saved_step = job.progress["checkpoint"]["step"]
    assert store.exists(job.checkpoint_key)

    second = run_job(job_id, settings, sessions, store, owner="w2")
    assert second.status == "succeeded"
    runs = [e for e in events(world, job_id, "status") if e["to"] == "running"]
    assert [r["worker"] for r in runs] == ["w1", "w2"]
    resumed = [e for e in events(world, job_id, "log") if e.get("message") == "resumed"]
    assert resumed and resumed[0]["step"] == saved_step
    assert world.job(job_id).attempts == 2
    assert not store.exists(job.checkpoint_key)  # dropped once the job finished


def test_reconciler_fails_jobs_out_of_attempts_and_finishes_cancelling(
    world, settings, sessions
) -> None:
    out_of_attempts, cancelling = world.submit(), world.submit()
    with sessions() as session:
        for job_id in (out_of_attempts, cancelling):
            lease_job(session, job_id, "gone", 60)
        session.get(Job, out_of_attempts).attempts = settings.max_attempts
        request_cancel(session, session.get(Job, cancelling))
        for job_id in (out_of_attempts, cancelling):
            session.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)
        session.commit()
        report = reconcile_once(session, settings, lambda _id: None)
    assert report.failed == [out_of_attempts] and report.cancelled == [cancelling]
    assert world.job(out_of_attempts).error["code"] == "worker_lost"
    assert world.job(cancelling).status == "cancelled"


def test_reconciler_resends_a_stale_queued_job_once_per_interval(world, settings, sessions) -> None:
    job_id = world.submit()
    with sessions() as session:
        sent: list[str] = []
        assert not reconcile_once(session, settings, sent.append)  # fresh: left alone
        session.get(Job, job_id).updated_at = utcnow() - timedelta(hours=1)
        session.commit()
        reconcile_once(session, settings, sent.append)
        reconcile_once(session, settings, sent.append)
    assert sent == [job_id]


def test_a_failed_publish_leaves_no_orphaned_artifacts(
    world, settings, sessions, store: LocalStore, monkeypatch
) -> None:
    def broken_insert(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr("service.adapters.create_adapter", broken_insert)
    job_id = world.submit(max_steps=6)
    assert run_job(job_id, settings, sessions, store).status == "failed"
    job = world.job(job_id)
    assert job.error == {
        "code": "internal_error",
        "message": "training failed; the operator can see the logs",
    }
    assert [e["to"] for e in events(world, job_id, "status")][-2:] == ["uploading", "failed"]
    adapters_dir = store.path_for(f"adapters/{world.tenant_id}/x").parent
    assert not adapters_dir.exists() or not any(p.is_file() for p in adapters_dir.rglob("*"))


def test_jobs_checkpoint_about_ten_times_unless_they_choose(world, tiny_model: Path) -> None:
    """Chosen at submission and stored with the job; the worker's plan only reads it."""
    from worker.job_spec import job_plan

    unchosen = world.job(world.submit(max_steps=40))
    assert unchosen.hyperparameters["training"]["checkpoint_every"] == 4
    assert "training.checkpoint_every" in unchosen.hyperparameters["chosen_by_service"]
    assert job_plan(unchosen, str(tiny_model)).checkpoint_every == 4
    chosen = world.job(world.submit(max_steps=40, checkpoint_every=7))
    assert job_plan(chosen, str(tiny_model)).checkpoint_every == 7


def test_a_job_the_worker_would_plan_differently_fails_instead_of_training(
    world, tiny_model: Path
) -> None:
    """The worker derives nothing new: a stored run length its own plan disagrees with (code
    that changed between submission and run) is an error, not a silently different run."""
    from worker.job_spec import job_plan

    job = world.job(world.submit(max_steps=40))
    assert job_plan(job, str(tiny_model)).total_steps == 40
    job.hyperparameters = {**job.hyperparameters, "total_steps": 41}
    with pytest.raises(ValueError, match="was planned as"):
        job_plan(job, str(tiny_model))


def test_a_cancel_during_the_final_evaluation_or_save_ends_cancelled(
    world, settings, sessions, store: LocalStore, monkeypatch
) -> None:
    """The trainer polls for cancellation before each micro-batch; a cancel that lands after
    the last poll (final evaluation, saving the bundle) must still end as cancelled, with no
    adapter and no artifacts, not as internal_error."""
    import adalora_core.trainer

    real_train = adalora_core.trainer.train
    job_id = world.submit(max_steps=6)

    def train_then_cancel(**kwargs):
        result = real_train(**kwargs)
        with sessions() as session:
            request_cancel(session, session.get(Job, job_id))
            session.commit()
        return result

    monkeypatch.setattr(adalora_core.trainer, "train", train_then_cancel)
    assert run_job(job_id, settings, sessions, store).status == "cancelled"
    job = world.job(job_id)
    assert job.status == "cancelled" and job.error is None and job.adapter_id is None
    assert [e["to"] for e in events(world, job_id, "status")][-2:] == ["cancelling", "cancelled"]
    assert events(world, job_id, "error") == []
    with sessions() as session:
        assert session.scalars(select(Adapter)).all() == []
    adapters_dir = store.path_for(f"adapters/{world.tenant_id}/x").parent
    assert not adapters_dir.exists() or not any(p.is_file() for p in adapters_dir.rglob("*"))


def test_a_job_on_two_devices_trains_across_two_processes_and_publishes(
    world, settings, sessions, store
) -> None:
    """No GPU here: the two ranks are CPU processes on gloo, the path CI can run. Rank 0 alone
    reports progress and publishes; the launcher checked both ranks' allocations agree."""
    job_id = world.submit(resources={"devices": 2})
    assert world.job(job_id).hyperparameters["resources"] == {"devices": 2, "precision": "auto"}
    outcome = run_job(job_id, settings, sessions, store)
    assert outcome.status == "succeeded"
    job = world.job(job_id)
    assert job.progress["step"] == 12
    assert len(events(world, job_id, "progress")) == 12  # one per update, from rank 0 only
    with sessions() as session:
        adapter = session.get(Adapter, job.adapter_id)
    weights = read_adapter(store.open_read(adapter.formats["peft"]["storage_key"]))
    assert weights.total_rank == adapter.total_rank <= adapter.rank_info["budget"]["target"]
    assert weights.meta.history and weights.meta.history[-1]["budget"] == 24


def test_an_adapter_that_answers_every_row_alike_gets_a_warning(
    world, settings, sessions, store
) -> None:
    """A learning rate far too high sends the tiny model to one label for every row (the
    collapse seen on CoLA and MRPC); the job still succeeds, but says so. A job that learned
    the sentiment words does not get the warning."""
    collapsed = world.submit(validate=True, learning_rate=50.0, max_steps=20)
    assert run_job(collapsed, settings, sessions, store).status == "succeeded"
    assert world.job(collapsed).metrics["eval_predicted_classes"] == 1.0
    warnings = [e["message"] for e in events(world, collapsed, "warning")]
    assert any("same label to every validation row" in m for m in warnings), warnings

    learned = world.submit(validate=True, learning_rate=5e-3, max_steps=400)
    assert run_job(learned, settings, sessions, store).status == "succeeded"
    assert world.job(learned).metrics["eval_predicted_classes"] == 2.0
    warnings = [e["message"] for e in events(world, learned, "warning")]
    assert not any("same label" in m for m in warnings), warnings


def test_a_bf16_job_trains_on_the_cpu_close_to_fp32(world, settings, sessions, store) -> None:
    """resources.precision reaches the trainer: the same job in bf16 (torch's CPU autocast)
    succeeds with an evaluation loss within 0.02 of fp32's (tests/core/test_precision.py bounds
    the adapter itself)."""
    losses = {}
    for precision in ("fp32", "bf16"):
        job_id = world.submit(resources={"precision": precision}, validate=True)
        assert run_job(job_id, settings, sessions, store).status == "succeeded"
        losses[precision] = world.job(job_id).metrics["eval_loss"]
    assert losses["bf16"] != losses["fp32"]  # it did compute in another format
    assert abs(losses["bf16"] - losses["fp32"]) < 0.02
