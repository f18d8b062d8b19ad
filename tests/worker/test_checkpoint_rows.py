"""Checkpoints are rows: each holds the adapter of its step (a bundle that reads like a finished
one), the job's keep policy keeps the newest N and the best by evaluation loss, the store's
garbage collector leaves kept ones alone, and a resumed run still starts from the newest."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import select

from adalora_core.formats.bundle import read_adapter
from service.checkpoints import job_checkpoints, retained
from service.consistency import check_store, collect_garbage
from service.store import checkpoint_prefix
from service.tables import JobEvent
from worker.runner import run_job


def _row(step: int, eval_loss: float | None) -> SimpleNamespace:
    metrics = {"train_loss": 1.0} if eval_loss is None else {"eval_loss": eval_loss}
    return SimpleNamespace(id=f"c{step}", step=step, metrics=metrics)


@pytest.mark.parametrize(
    ("keep", "expected"),
    [
        (None, {"c2", "c4", "c6", "c8"}),  # no policy: every checkpoint
        (1, {"c8", "c4"}),  # the newest and the best (step 4) by eval loss
        (2, {"c6", "c8", "c4"}),
        (3, {"c4", "c6", "c8"}),  # the best is among the newest three
    ],
)
def test_the_keep_policy_is_the_newest_n_and_the_best(keep, expected) -> None:
    rows = [_row(2, 0.9), _row(4, 0.3), _row(6, 0.5), _row(8, None)]
    assert retained(rows, keep) == expected


def _eval_loss_by_step(sessions, job_id: str) -> dict[int, float]:
    with sessions() as session:
        events = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "eval")
        ).all()
        return {e.data["step"]: e.data["metrics"]["eval_loss"] for e in events}


def test_a_job_keeps_the_newest_and_the_best_checkpoint_as_servable_bundles(
    world, settings, sessions, store
) -> None:
    job_id = world.submit(
        validate=True, checkpoints={"keep": 1}, max_steps=12, checkpoint_every=2, eval_every=2
    )
    assert run_job(job_id, settings, sessions, store).status == "succeeded"

    losses = _eval_loss_by_step(sessions, job_id)
    made = [2, 4, 6, 8, 10]  # every 2 updates but not after the last (12)
    best = min(made, key=lambda step: (losses[step], -step))
    with sessions() as session:
        rows = job_checkpoints(session, job_id)
        assert {r.step for r in rows} == {10, best}
        for row in rows:
            assert row.metrics["eval_loss"] == losses[row.step]
            assert row.base_model == "tiny" and row.task == "classification"
            assert row.budget["current"] <= row.budget["initial"]
            peft = row.formats["peft"]
            assert row.size_bytes == peft["size_bytes"]
            weights = read_adapter(store.open_read(peft["storage_key"], peft["sha256"]))
            assert weights.total_rank == row.budget["current"]
            assert weights.meta.labels == ["negative", "positive"]
        kept = sorted(info["storage_key"] for r in rows for info in r.formats.values())
        # Only the kept adapters stay under the job's prefix; the collector keeps them too.
        stored = sorted(o.key for o in store.list_objects(checkpoint_prefix(job_id) + "/"))
        assert stored == kept
        assert check_store(session, store).consistent
        assert collect_garbage(session, store, grace_s=0.0) == []
    assert all(store.exists(key) for key in kept)
