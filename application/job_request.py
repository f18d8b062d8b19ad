"""The body of a job submission: what a job asks for. Every training or AdaLoRA field left out
is chosen by the service (``adalora_core.recipe``) and the job's stored ``hyperparameters``
show the values that ran."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from adalora_core.compute_choices import Precision
from application.request_fields import Name, Strict, Text
from application.tracking_request import MlflowSettings, Tracker, WandbSettings
from service.vocabulary import OutputMode

TaskName = Literal["classification", "regression", "causal-lm", "seq2seq"]


class Columns(Strict):
    text: Name
    text_pair: Name | None = None
    label: Name | None = None
    target: Name | None = None


class AdaLoraParams(Strict):
    """Every field left out is chosen by the service (``adalora_core.recipe``); the job's
    ``hyperparameters`` show the values that ran."""

    init_r: int | None = None
    target_r: int | None = None
    t_init: int | None = None
    t_final: int | None = None
    delta_t: int | None = None
    beta1: float | None = None
    beta2: float | None = None
    orth_reg_weight: float | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    target_modules: list[Text] | Text | None = None
    pq_init: Literal["normal", "orthonormal"] | None = Field(
        None, description="How P and Q start: the paper's N(0, 0.02), or orthonormal."
    )


class TrainingParams(Strict):
    """Every field left out is chosen by the service from the data set's size and the task."""

    epochs: float | None = Field(None, description="Passes over the data.")
    max_steps: int | None = Field(None, description="Optimizer updates, instead of epochs.")
    batch_size: int | None = None
    grad_accum: int | None = None
    learning_rate: float | None = None
    warmup_ratio: float | None = None
    weight_decay: float | None = None
    max_grad_norm: float | None = Field(None, description="Gradient clipping; 0 turns it off.")
    max_length: int | None = None
    group_by_length: bool | None = Field(
        None, description="Batch rows of similar length together: less padding, faster."
    )
    seed: int | None = None
    eval_every: int | None = None
    checkpoint_every: int | None = None
    keep_best: bool | None = Field(
        None,
        description="Publish the adapter of the evaluation with the lowest validation loss "
        "instead of the last; needs validation_dataset_id. Left out: on when the job has "
        "validation data.",
    )
    early_stop_patience: int | None = Field(
        None,
        description="End the run once this many evaluations in a row have not lowered the "
        "validation loss; needs validation_dataset_id. Left out: the run goes to its last update.",
    )


class ResourcesParams(Strict):
    devices: int = Field(
        1,
        ge=1,
        description="Processes the job trains on: one GPU each on a GPU worker "
        "(torch.distributed data parallel), CPU processes otherwise.",
    )
    precision: Precision = Field(
        "auto",
        description="The format training computes in: auto is fp32 on a CPU, bf16 on GPUs that "
        "compute it natively, fp16 with loss scaling on older GPUs; fp32, bf16 or fp16 force one "
        "(bf16 and fp16 run on a CPU too, through torch's CPU autocast).",
    )


class CheckpointPolicy(Strict):
    keep: int | None = Field(
        None,
        ge=1,
        description="Keep the newest this many checkpoints and the best by evaluation loss; "
        "the rest are deleted as they are replaced. Left out: every checkpoint is kept.",
    )


class InitFrom(Strict):
    """Where a continued job starts: a finished adapter or a checkpoint, by id (one of them)."""

    adapter_id: Name | None = None
    checkpoint_id: Name | None = None


class JobCreate(Strict):
    base_model: Name
    task: TaskName
    dataset_id: Name
    validation_dataset_id: Name | None = None
    columns: Columns | None = Field(
        None,
        description="Which columns hold what. A causal-lm job may leave it out when its data "
        "set is a chat ('messages') or has 'prompt' and 'completion' columns.",
    )
    adalora: AdaLoraParams = Field(default_factory=AdaLoraParams)
    training: TrainingParams = Field(default_factory=TrainingParams)
    resources: ResourcesParams = Field(default_factory=ResourcesParams)
    checkpoints: CheckpointPolicy = Field(default_factory=CheckpointPolicy)
    init_from: InitFrom | None = Field(
        None,
        description="Continue training: start from this adapter's or checkpoint's weights and "
        "allocation, on its base (settings it fixes default to its own; others are a 422).",
    )
    learning_rate_multiplier: float | None = Field(
        None,
        gt=0,
        le=100,
        description="Scales the learning rate the service chooses (OpenAI's "
        "learning_rate_multiplier); not with training.learning_rate.",
    )
    output: OutputMode = OutputMode.UNMERGED
    name: Name | None = None
    suffix: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Part of the fine-tuned model's name, "
        "ft:<base>:<tenant>:<suffix>:<job id>, under which /v1/* serves the finished adapter.",
    )
    metadata: dict[str, Any] = Field(default_factory=dict)
    report_to: list[Tracker] = Field(
        default_factory=list,
        description="Experiment trackers the job also reports to: its settings, every step's "
        "loss, learning rate, rank budget and gradient norm, evaluations and the rank allocation.",
    )
    mlflow: MlflowSettings | None = None
    wandb: WandbSettings | None = None
