"""Task kinds, the one home of that vocabulary: what a task learns from which columns, the model
class it runs on, and the checks every row must pass.

Torch-free, so callers checking a job at submission need not load torch. How rows become
tensors is ``adalora_core.encoding``; loading the model is ``adalora_core.hf_loading``; scoring
is ``adalora_core.training.evaluation``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from adalora_core.chat_template import is_chat
from adalora_core.errors import ConfigError

CLASSIFICATION = "classification"
REGRESSION = "regression"
CAUSAL_LM = "causal-lm"
SEQ2SEQ = "seq2seq"
TASK_KINDS = (CLASSIFICATION, REGRESSION, CAUSAL_LM, SEQ2SEQ)

# The model class a task runs on: classification and regression share one base class (and so
# one loaded base in the serving engine), the generative kinds each have their own.
ModelKind = Literal["sequence-classification", "causal-lm", "seq2seq"]
MODEL_KIND: dict[str, ModelKind] = {
    CLASSIFICATION: "sequence-classification",
    REGRESSION: "sequence-classification",
    CAUSAL_LM: "causal-lm",
    SEQ2SEQ: "seq2seq",
}
AUTO_CLASS: dict[ModelKind, str] = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
}
_PEFT_TASK_TYPE = {
    CLASSIFICATION: "SEQ_CLS",
    REGRESSION: "SEQ_CLS",
    CAUSAL_LM: "CAUSAL_LM",
    SEQ2SEQ: "SEQ_2_SEQ_LM",
}


@dataclass(frozen=True)
class TaskSpec:
    """What to learn from which columns of the rows."""

    kind: str
    text_column: str
    text_pair_column: str | None = None
    label_column: str | None = None
    target_column: str | None = None
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and not isinstance(self.labels, tuple):
            object.__setattr__(self, "labels", tuple(self.labels))

    def validate(self) -> TaskSpec:
        if self.kind not in TASK_KINDS:
            raise ConfigError("task.kind", f"must be one of {list(TASK_KINDS)}, got {self.kind!r}")
        if not self.text_column:
            raise ConfigError("task.text_column", "is required")
        if self.kind in (CLASSIFICATION, REGRESSION) and not self.label_column:
            raise ConfigError("task.label_column", f"is required for {self.kind}")
        if self.kind == CLASSIFICATION:
            labels = self.labels or ()
            if len(labels) < 2:
                raise ConfigError("task.labels", "classification needs at least two label names")
            if len(set(labels)) != len(labels):
                raise ConfigError("task.labels", "label names must be unique")
            if any(not isinstance(x, str) or not x for x in labels):
                raise ConfigError("task.labels", "label names must be non-empty strings")
        elif self.labels:
            raise ConfigError("task.labels", f"only classification takes labels, not {self.kind}")
        if self.kind == SEQ2SEQ and not self.target_column:
            raise ConfigError("task.target_column", "is required for seq2seq")
        if self.kind in (CLASSIFICATION, REGRESSION) and self.target_column:
            raise ConfigError("task.target_column", f"is not used by {self.kind}")
        if self.text_pair_column and self.kind not in (CLASSIFICATION, REGRESSION):
            raise ConfigError("task.text_pair_column", f"is not used by {self.kind}")
        return self

    @property
    def columns(self) -> list[str]:
        """Columns every row must have."""
        named = [self.text_column, self.text_pair_column, self.label_column, self.target_column]
        return [c for c in named if c]

    @property
    def num_labels(self) -> int:
        return len(self.labels or ()) if self.kind == CLASSIFICATION else 1

    @property
    def peft_task_type(self) -> str:
        return _PEFT_TASK_TYPE[self.kind]

    @property
    def auto_class_name(self) -> str:
        return AUTO_CLASS[MODEL_KIND[self.kind]]

    @property
    def is_language_modelling(self) -> bool:
        return self.kind in (CAUSAL_LM, SEQ2SEQ)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["labels"] = list(self.labels) if self.labels is not None else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskSpec:
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__ if k in data})


def check_rows(task: TaskSpec, rows: Sequence[Mapping[str, Any]], split: str) -> None:
    """Name the first row that lacks a column or carries an unusable label or value."""
    if not rows:
        raise ConfigError(split, "has no rows")
    for index, row in enumerate(rows):
        for column in task.columns:
            if column not in row or row[column] is None:
                raise ConfigError(f"{split}[{index}].{column}", "missing value")
        for column in (task.text_column, task.text_pair_column, task.target_column):
            value = row.get(column) if column else None
            chat = task.kind == CAUSAL_LM and column == task.text_column and is_chat(value)
            if column and not isinstance(value, str) and not chat:
                raise ConfigError(f"{split}[{index}].{column}", "must be a string")
        if task.kind == CLASSIFICATION:
            label_index(task, row[task.label_column], f"{split}[{index}].{task.label_column}")
        elif task.kind == REGRESSION:
            regression_target(row[task.label_column], f"{split}[{index}].{task.label_column}")


def label_index(task: TaskSpec, value: Any, where: str) -> int:
    """A label given by name, or by its index in ``task.labels``."""
    labels = task.labels or ()
    if isinstance(value, str):
        if value in labels:
            return labels.index(value)
        raise ConfigError(where, f"unknown label {value!r}; expected one of {list(labels)}")
    is_integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if is_integer and 0 <= int(value) < len(labels):
        return int(value)
    raise ConfigError(where, f"label {value!r} is not a label name nor an index < {len(labels)}")


def regression_target(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(where, "must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(where, f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(where, "must be finite")
    return number
