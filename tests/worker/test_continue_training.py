"""Continue training (``init_from``): a job started from a finished adapter or a checkpoint
scores at its step 0 exactly as the source did, then trains on; settings that contradict the
source are a 422 naming them, and nothing is stored."""

from __future__ import annotations

from typing import Any

import pytest
from service_fixtures import job_body
from sqlalchemy import func, select

from application.errors import RequestError
from application.job_request import JobCreate
from application.jobs import submit_job
from service.checkpoints import job_checkpoints
from service.tables import Job, JobEvent
from worker.runner import run_job


def _evals(sessions, job_id: str) -> dict[int, dict[str, float]]:
    with sessions() as session:
        rows = session.scalars(
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.kind == "eval")
        ).all()
        return {r.data["step"]: r.data["metrics"] for r in rows}


def _submit(world, init_from: dict[str, Any], **changes: Any) -> str:
    body = job_body(world.dataset_id, max_steps=6)
    body["validation_dataset_id"] = world.dataset_id
    body["init_from"] = init_from
    for dotted, value in changes.items():
        target = body
        *parents, leaf = dotted.split("__")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    with world.sessions() as session:
        submitted = submit_job(
            session,
            world.settings,
            world.tenant_id,
            JobCreate.model_validate(body),
            None,
            lambda _: None,
        )
        return submitted.job.id


def _same_scores(started: dict[str, float], source: dict[str, float]) -> None:
    assert started["eval_loss"] == pytest.approx(source["eval_loss"], abs=1e-5)
    assert started["accuracy"] == source["accuracy"]


def test_a_continued_job_starts_where_its_adapter_or_checkpoint_ended(
    world, settings, sessions, store
) -> None:
    first = world.submit(validate=True, max_steps=12, checkpoint_every=4, eval_every=4)
    assert run_job(first, settings, sessions, store).status == "succeeded"
    source = _evals(sessions, first)
    adapter_id = world.job(first).adapter_id

    from_adapter = _submit(world, {"adapter_id": adapter_id})
    hyper = world.job(from_adapter).hyperparameters
    assert hyper["init_from"]["adapter_id"] == adapter_id
    assert run_job(from_adapter, settings, sessions, store).status == "succeeded"
    continued = _evals(sessions, from_adapter)
    _same_scores(continued[0], source[12])  # step 0: the adapter as it was published
    assert max(continued) == 6  # and then it trained its own six updates

    with sessions() as session:
        checkpoint = next(c for c in job_checkpoints(session, first) if c.step == 4)
    from_checkpoint = _submit(world, {"checkpoint_id": checkpoint.id})
    assert run_job(from_checkpoint, settings, sessions, store).status == "succeeded"
    _same_scores(_evals(sessions, from_checkpoint)[0], source[4])


@pytest.mark.parametrize(
    ("init_from", "changes", "field"),
    [
        ({"adapter_id": "ad_missing"}, {}, "init_from.adapter_id"),
        ({"adapter_id": "ADAPTER", "checkpoint_id": "ckpt_x"}, {}, "init_from"),
        ({"adapter_id": "ADAPTER"}, {"adalora__init_r": 6}, "adalora.init_r"),
        ({"adapter_id": "ADAPTER"}, {"adalora__lora_alpha": 3.0}, "adalora.lora_alpha"),
        ({"adapter_id": "ADAPTER"}, {"task": "regression"}, "task"),
    ],
)
def test_settings_that_do_not_fit_the_source_are_refused_by_name(
    world, settings, sessions, store, init_from, changes, field
) -> None:
    first = world.submit(max_steps=6)
    assert run_job(first, settings, sessions, store).status == "succeeded"
    adapter_id = world.job(first).adapter_id
    init_from = {k: adapter_id if v == "ADAPTER" else v for k, v in init_from.items()}
    with sessions() as session:
        before = session.scalar(select(func.count()).select_from(Job))
    with pytest.raises(RequestError) as refused:
        _submit(world, init_from, **changes)
    assert refused.value.status == 422 and refused.value.field == field
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == before
