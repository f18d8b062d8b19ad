"""Turns a job row (as the API stored it) into the arguments of ``adalora_core.train``.

The API validated everything at submission and stored the resolved settings in
``hyperparameters`` (every section complete: the recipe filled what the body left out); the
worker uses them as they are and derives nothing again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from adalora_core.config import AdaLoraConfig
from adalora_core.tasks import TaskSpec
from adalora_core.training_config import TrainingConfig
from service.tables import Job
from service.vocabulary import OutputMode


@dataclass(frozen=True)
class JobSpec:
    task: TaskSpec
    adalora: AdaLoraConfig
    training: TrainingConfig
    merged: bool
    devices: int = 1  # data-parallel processes (resources.devices)


def _section(job: Job, name: str) -> dict[str, Any]:
    """A section the API resolved and stored in ``hyperparameters``: complete, used as is."""
    resolved = (job.hyperparameters or {}).get(name)
    if not isinstance(resolved, dict):
        raise ValueError(f"job {job.id} has no resolved {name!r} settings")
    return dict(resolved)


CHECKPOINTS_PER_RUN = 10


def default_checkpoint_every(total_steps: int | None) -> int | None:
    """A lost worker should cost at most a tenth of the run, so jobs that did not choose an
    interval still checkpoint about ten times."""
    if not total_steps or total_steps < 2:
        return None
    return max(1, math.ceil(total_steps / CHECKPOINTS_PER_RUN))


def job_spec(job: Job) -> JobSpec:
    hyper = job.hyperparameters or {}
    training = TrainingConfig(**_section(job, "training"))
    if training.checkpoint_every is None:
        training = replace(
            training, checkpoint_every=default_checkpoint_every(hyper.get("total_steps"))
        )
    columns = _section(job, "columns")
    labels = hyper.get("labels")
    spec = TaskSpec(
        kind=job.task,
        text_column=columns.get("text") or "",
        text_pair_column=columns.get("text_pair"),
        label_column=columns.get("label"),
        target_column=columns.get("target"),
        labels=tuple(str(x) for x in labels) if labels else None,
    )
    return JobSpec(
        task=spec.validate(),
        adalora=AdaLoraConfig.from_dict(_section(job, "adalora")),
        training=training.validate(),
        merged=hyper.get("output") == OutputMode.MERGED,
        # Jobs stored before resources existed ran on one device.
        devices=int((hyper.get("resources") or {}).get("devices", 1)),
    )
