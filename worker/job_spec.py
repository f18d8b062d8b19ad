"""Turns a job row (as the API stored it) into the arguments of ``adalora_core.train``.

The API validated everything at submission; ``hyperparameters`` holds the resolved values
(labels, schedule), ``request`` the body as submitted.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from adalora_core.config import AdaLoraConfig
from adalora_core.errors import ConfigError
from adalora_core.plan import TrainingConfig
from adalora_core.tasks import TaskSpec
from registry.models import Job


@dataclass(frozen=True)
class JobSpec:
    task: TaskSpec
    adalora: AdaLoraConfig
    training: TrainingConfig
    output: str


def _section(job: Job, name: str) -> dict[str, Any]:
    """A resolved section from hyperparameters, else the submitted one, else empty."""
    for source in (job.hyperparameters or {}, job.request or {}):
        value = source.get(name)
        if isinstance(value, dict):
            return dict(value)
    return {}


def job_spec(job: Job) -> JobSpec:
    task = _section(job, "task")
    task.setdefault("kind", job.task)
    labels = (job.hyperparameters or {}).get("labels", task.get("labels"))
    known_task = {f.name for f in fields(TaskSpec)}
    spec = TaskSpec(
        **{k: v for k, v in task.items() if k in known_task and k != "labels"},
        labels=tuple(labels) if labels else None,
    )
    training = _section(job, "training")
    known_training = {f.name for f in fields(TrainingConfig)}
    unknown = sorted(set(training) - known_training)
    if unknown:
        raise ConfigError(f"training.{unknown[0]}", "unknown training setting")
    output = (job.request or {}).get("output") or (job.hyperparameters or {}).get("output")
    return JobSpec(
        task=spec.validate(),
        adalora=AdaLoraConfig.from_dict(_section(job, "adalora")),
        training=TrainingConfig(**training).validate(),
        output=output or "peft",
    )
