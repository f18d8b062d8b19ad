"""The body of OpenAI's ``POST /v1/fine_tuning/jobs`` (the official package's
``job_create_params``), and what AdaLoRA adds through the client's ``extra_body``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from application.job_request import AdaLoraParams, CheckpointPolicy, ResourcesParams

Auto = Literal["auto"]


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: Auto | int | None = Field(None, description='"auto" (ours) or a number of epochs.')
    batch_size: Auto | int | None = Field(None, description='"auto" (ours) or rows per update.')
    learning_rate_multiplier: Auto | float | None = Field(
        None, description='"auto" (1) or a factor on the automatic learning rate.'
    )


class Supervised(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    """Any type parses, so the route can name ``method.type`` in its 400."""

    model_config = ConfigDict(extra="allow")
    type: str
    supervised: Supervised | None = None


class AdaLoraExtra(BaseModel):
    """What the ``adalora`` extra body field may hold: our job body's own sections."""

    model_config = ConfigDict(extra="forbid")
    adalora: AdaLoraParams = Field(default_factory=AdaLoraParams)
    resources: ResourcesParams = Field(default_factory=ResourcesParams)
    checkpoints: CheckpointPolicy = Field(default_factory=CheckpointPolicy)
    max_length: int | None = Field(None, description="training.max_length")


class FineTuningJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(..., min_length=1)
    training_file: str = Field(..., min_length=1)
    validation_file: str | None = None
    suffix: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    hyperparameters: Hyperparameters | None = Field(
        None, description="Deprecated by OpenAI in favour of method.supervised.hyperparameters."
    )
    method: Method | None = None
    integrations: list[dict[str, Any]] | None = None
    adalora: AdaLoraExtra | None = Field(
        None, description="AdaLoRA's own settings (the client's extra_body)."
    )
