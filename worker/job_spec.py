"""Turns a job row (as the API stored it) into the arguments of ``adalora_core.train``.

The API validated everything at submission; ``hyperparameters`` holds the resolved values
(labels, schedule), ``request`` the body as submitted.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
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


def _section(job: Job, name: str, known: set[str]) -> dict[str, Any]:
    """Settings the user gave (unset ones left to the library's defaults), with the resolved
    values from ``hyperparameters`` laid over them."""
    merged: dict[str, Any] = {}
    for source in (job.request or {}, job.hyperparameters or {}):
        value = source.get(name)
        if isinstance(value, dict):
            merged.update({k: v for k, v in value.items() if v is not None and k in known})
    return merged


def job_spec(job: Job) -> JobSpec:
    request = job.request or {}
    columns = request.get("columns") or {}
    labels = (job.hyperparameters or {}).get("labels")
    spec = TaskSpec(
        kind=job.task,
        text_column=columns.get("text") or "",
        text_pair_column=columns.get("text_pair"),
        label_column=columns.get("label"),
        target_column=columns.get("target"),
        labels=tuple(str(x) for x in labels) if labels else None,
    )
    adalora = _section(job, "adalora", {f.name for f in fields(AdaLoraConfig)})
    training = _section(job, "training", {f.name for f in fields(TrainingConfig)})
    if training.get("max_steps") is not None and "epochs" not in (request.get("training") or {}):
        training["epochs"] = None  # max_steps replaces the default epoch count
    return JobSpec(
        task=spec.validate(),
        adalora=AdaLoraConfig.from_dict(adalora),
        training=TrainingConfig(**training).validate(),
        merged=request.get("output") == "merged",
    )
