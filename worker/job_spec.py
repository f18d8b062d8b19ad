"""Turns a job row (as the API stored it) into what ``adalora_core.train`` needs.

The API resolved everything at submission and stored it in ``hyperparameters`` (every section
complete: the recipe filled what the body left out, the checkpoint interval included). The
worker plans the run from those stored settings (``plan_run``: nothing is chosen again, so the
plan is the one the API stored) and checks it against the base on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adalora_core.config import AdaLoraConfig
from adalora_core.context_limit import context_limit
from adalora_core.run_plan import ADALORA, RunPlan, plan_run
from adalora_core.tasks import TaskSpec
from adalora_core.training_config import TrainingConfig
from service.tables import Job
from service.vocabulary import OutputMode


@dataclass(frozen=True)
class JobSpec:
    task: TaskSpec
    plan: RunPlan
    merged: bool
    devices: int = 1  # data-parallel processes (resources.devices)
    precision: str = "auto"  # resources.precision


def _stored(job: Job, name: str) -> Any:
    """A value the API resolved and stored in ``hyperparameters``, used as is."""
    value = (job.hyperparameters or {}).get(name)
    if value is None:
        raise ValueError(f"job {job.id} has no resolved {name!r}")
    return value


def _section(job: Job, name: str) -> dict[str, Any]:
    section = _stored(job, name)
    if not isinstance(section, dict):
        raise ValueError(f"job {job.id} has no resolved {name!r} settings")
    return dict(section)


def job_plan(job: Job, base_model_dir: str) -> RunPlan:
    """The run the API planned for ``job``; a plan that came out differently here (another
    update count or schedule) would train something the user did not see, so it fails."""
    plan = plan_run(
        int(_stored(job, "num_train_rows")),
        TrainingConfig(**_section(job, "training")),
        AdaLoraConfig.from_dict(_section(job, "adalora")),
        method=ADALORA,
        max_positions=context_limit(base_model_dir),
    )
    stored = (_stored(job, "total_steps"), _section(job, "schedule"))
    planned = (plan.total_steps, plan.schedule.to_dict() if plan.schedule else None)
    if planned != stored:
        raise ValueError(f"job {job.id} was planned as {stored}; this worker plans {planned}")
    return plan


def job_spec(job: Job, base_model_dir: str) -> JobSpec:
    hyper = job.hyperparameters or {}
    columns = _section(job, "columns")
    labels = hyper.get("labels")
    task = TaskSpec(
        kind=job.task,
        text_column=columns.get("text") or "",
        text_pair_column=columns.get("text_pair"),
        label_column=columns.get("label"),
        target_column=columns.get("target"),
        labels=tuple(str(x) for x in labels) if labels else None,
    )
    return JobSpec(
        task=task,  # checked by the trainer, with the rows
        plan=job_plan(job, base_model_dir),
        merged=hyper.get("output") == OutputMode.MERGED,
        # Jobs stored before resources (or its precision) existed ran on one device, "auto".
        devices=int((hyper.get("resources") or {}).get("devices", 1)),
        precision=str((hyper.get("resources") or {}).get("precision", "auto")),
    )
