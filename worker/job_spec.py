"""Turns a job row (as the API stored it) into the arguments of ``adalora_core.train``.

The API validated everything at submission; ``hyperparameters`` holds the resolved values
(labels, schedule), ``request`` the body as submitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from adalora_core.config import AdaLoraConfig
from adalora_core.tasks import TaskSpec
from adalora_core.training_config import TrainingConfig
from registry.models import Job
from registry.vocabulary import OutputMode


@dataclass(frozen=True)
class JobSpec:
    task: TaskSpec
    adalora: AdaLoraConfig
    training: TrainingConfig
    merged: bool


def _section(job: Job, name: str) -> dict[str, Any]:
    """The resolved section the API stored in ``hyperparameters`` (complete, used as is), else
    the submitted one with unset fields left to the library defaults."""
    resolved = (job.hyperparameters or {}).get(name)
    if isinstance(resolved, dict):
        return dict(resolved)
    given = {k: v for k, v in ((job.request or {}).get(name) or {}).items() if v is not None}
    if name == "training" and "max_steps" in given and "epochs" not in given:
        given["epochs"] = None  # max_steps replaces the default epoch count
    return given


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
        merged=(hyper.get("output") or (job.request or {}).get("output")) == OutputMode.MERGED,
    )
