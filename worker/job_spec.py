"""Turns a job row (as the API stored it) into the arguments of ``adalora_core.train``.

The API validated everything at submission; ``hyperparameters`` holds the resolved values
(labels, schedule), ``request`` the body as submitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adalora_core.config import AdaLoraConfig
from adalora_core.plan import TrainingConfig
from adalora_core.tasks import TaskSpec
from registry.models import Job


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


def job_spec(job: Job) -> JobSpec:
    hyper = job.hyperparameters or {}
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
        training=TrainingConfig(**_section(job, "training")).validate(),
        merged=(hyper.get("output") or (job.request or {}).get("output")) == "merged",
    )
