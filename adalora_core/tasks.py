"""Task kinds: which model class, which head is trained, how rows become batches, what is scored.

``TaskSpec`` and its validation are torch-free so that callers checking a job at submission
need not load torch; the functions that build models and tensors import it when called.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from adalora_core import scoring
from adalora_core.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

CLASSIFICATION = "classification"
REGRESSION = "regression"
CAUSAL_LM = "causal-lm"
SEQ2SEQ = "seq2seq"
TASK_KINDS = (CLASSIFICATION, REGRESSION, CAUSAL_LM, SEQ2SEQ)

# Sequence-classification heads by model family; they are trained and saved with the adapter.
SEQ_CLS_HEADS = ("classifier", "score", "classification_head")
POOLER = "pooler"
IGNORE_INDEX = -100

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
            chat = task.kind == CAUSAL_LM and column == task.text_column and _is_chat(value)
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


def load_tokenizer(base_model: str | Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_model))
    if tokenizer.pad_token is None:
        # Decoder-only tokenizers (GPT-2) have no pad token; padding is masked out anyway.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    base_model: str | Path, task: TaskSpec, tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    import transformers

    auto = getattr(transformers, task.auto_class_name)
    kwargs: dict[str, Any] = {}
    if task.kind == CLASSIFICATION:
        labels = list(task.labels or ())
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            problem_type="single_label_classification",
        )
    elif task.kind == REGRESSION:
        kwargs.update(num_labels=1, problem_type="regression")
    if task.kind in (CLASSIFICATION, REGRESSION):
        # The head is trained from scratch; a base saved with another label count is fine.
        kwargs["ignore_mismatched_sizes"] = True
    model = auto.from_pretrained(str(base_model), **kwargs)
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def head_modules(task: TaskSpec, model: torch.nn.Module) -> tuple[str, ...]:
    """Modules trained in full and saved with the adapter (none for LM tasks).

    For sequence classification: the classifier, plus the pooler that feeds it where the
    family has one (BERT, DeBERTa). A pooler pre-trained for another objective (or left over
    from a sentence-embedding model such as all-MiniLM-L6-v2) gives features a frozen-pooler
    classifier barely learns from, so it is trained and saved along with the classifier.
    """
    if task.is_language_modelling:
        return ()
    children = dict(model.named_children())
    heads = [name for name in SEQ_CLS_HEADS if name in children]
    poolers = [
        path
        for path, _ in model.named_modules()
        if path.split(".")[-1] == POOLER and path.count(".") <= 1
    ]
    return tuple(heads + poolers)


def encode_rows(
    task: TaskSpec,
    rows: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    split: str = "train_rows",
) -> list[dict[str, Any]]:
    """Tokenize once, unpadded; batches are padded per batch by :func:`make_collator`."""
    check_rows(task, rows, split)
    encoded: list[dict[str, Any]] = []
    for index, row in enumerate(rows):
        where = f"{split}[{index}]"
        if task.kind in (CLASSIFICATION, REGRESSION):
            pair = row[task.text_pair_column] if task.text_pair_column else None
            features = dict(
                tokenizer(row[task.text_column], pair, truncation=True, max_length=max_length)
            )
            if task.kind == CLASSIFICATION:
                features["labels"] = label_index(task, row[task.label_column], where)
            else:
                features["labels"] = regression_target(row[task.label_column], where)
        elif task.kind == CAUSAL_LM and _is_chat(row[task.text_column]):
            features = _encode_chat(row[task.text_column], tokenizer, max_length, where)
            _require_supervision(features, "assistant", max_length, where)
        elif task.kind == CAUSAL_LM:
            features = _encode_causal(task, row, tokenizer, max_length)
            if task.target_column:
                _require_supervision(features, "completion", max_length, where)
        else:
            features = dict(
                tokenizer(row[task.text_column], truncation=True, max_length=max_length)
            )
            target = tokenizer(text_target=row[task.target_column], truncation=True)
            features["labels"] = list(target["input_ids"])[:max_length]
        encoded.append(features)
    return encoded


def _encode_causal(
    task: TaskSpec, row: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> dict[str, Any]:
    """Loss on the target tokens only when a target column is given, else on the whole text."""
    prompt = list(tokenizer(row[task.text_column])["input_ids"])
    if task.target_column:
        target = list(tokenizer(row[task.target_column], add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            target.append(tokenizer.eos_token_id)
        ids = (prompt + target)[:max_length]
        labels = ([IGNORE_INDEX] * len(prompt) + target)[:max_length]
    else:
        ids = prompt[:max_length]
        labels = list(ids)
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def _require_supervision(
    features: Mapping[str, Any], part: str, max_length: int, where: str
) -> None:
    """A row cut to max_length before its first learned token teaches nothing, and a batch of
    only such rows would make the loss 0/0 (NaN) and ruin the adapter: name it instead."""
    if all(label == IGNORE_INDEX for label in features["labels"]):
        raise ConfigError(
            where,
            f"no {part} token within training.max_length ({max_length} tokens): the row is cut "
            f"before its {part} starts; raise training.max_length or shorten the row",
        )


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, Mapping) for m in value)


def _encode_chat(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    where: str,
) -> dict[str, Any]:
    """A conversation rendered by the tokenizer's chat template, with the loss on the
    assistant's tokens only: an assistant turn's tokens are what its message adds to the
    rendering of the conversation before it (which ends with the generation prompt)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            where, "this base model's tokenizer has no chat template; use prompt/completion rows"
        )
    chat = [{"role": m["role"], "content": m["content"]} for m in messages]
    full = _chat_ids(tokenizer, chat, generation_prompt=False)
    labels = [IGNORE_INDEX] * len(full)
    for index, message in enumerate(chat):
        if message["role"] != "assistant":
            continue
        start = len(_chat_ids(tokenizer, chat[:index], generation_prompt=True)) if index else 0
        end = len(_chat_ids(tokenizer, chat[: index + 1], generation_prompt=False))
        labels[start:end] = full[start:end]
    ids, labels = full[:max_length], labels[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def chat_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, chat: Sequence[Mapping[str, str]], where: str
) -> list[int]:
    """A conversation to answer, rendered exactly as training renders the turns before an
    assistant message (so an adapter sees at serving time what it learned from)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(where, "this model's tokenizer has no chat template; use completions")
    return _chat_ids(tokenizer, [dict(m) for m in chat], generation_prompt=True)


def _chat_ids(
    tokenizer: PreTrainedTokenizerBase, chat: list[dict[str, Any]], generation_prompt: bool
) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        chat, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
    )
    return list(encoded["input_ids"])


def make_collator(
    task: TaskSpec, tokenizer: PreTrainedTokenizerBase
) -> Callable[[Sequence[Mapping[str, Any]]], dict[str, torch.Tensor]]:
    import torch

    def collate(examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        inputs = [{k: v for k, v in ex.items() if k != "labels"} for ex in examples]
        batch = dict(tokenizer.pad(inputs, padding=True, return_tensors="pt"))
        labels = [ex["labels"] for ex in examples]
        if task.kind == CLASSIFICATION:
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        elif task.kind == REGRESSION:
            batch["labels"] = torch.tensor(labels, dtype=torch.float32)
        else:
            width = max(len(x) for x in labels)
            padded = [x + [IGNORE_INDEX] * (width - len(x)) for x in labels]
            batch["labels"] = torch.tensor(padded, dtype=torch.long)
        return batch

    return collate


class EvalAccumulator:
    """Collects predictions batch by batch and turns them into the task's metric set."""

    def __init__(self, task: TaskSpec) -> None:
        self.task = task
        self.predictions: list[float] = []
        self.references: list[float] = []
        self.loss_sum = 0.0
        self.loss_count = 0

    def add(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> None:
        import torch.nn.functional as F

        logits = outputs.logits.float()
        labels = batch["labels"]
        if self.task.kind == CLASSIFICATION:
            self.loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            self.loss_count += labels.numel()
            self.predictions += logits.argmax(dim=-1).tolist()
            self.references += labels.tolist()
        elif self.task.kind == REGRESSION:
            values = logits.squeeze(-1)
            self.loss_sum += float(F.mse_loss(values, labels.float(), reduction="sum"))
            self.loss_count += labels.numel()
            self.predictions += values.tolist()
            self.references += labels.tolist()
        else:
            if self.task.kind == CAUSAL_LM:
                logits, labels = logits[:, :-1, :], labels[:, 1:]
            flat_labels = labels.reshape(-1)
            self.loss_sum += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    flat_labels,
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
            )
            self.loss_count += int((flat_labels != IGNORE_INDEX).sum())

    def result(self) -> dict[str, float]:
        eval_loss = self.loss_sum / max(self.loss_count, 1)
        if self.task.kind == CLASSIFICATION:
            ints = [int(x) for x in self.predictions]
            refs = [int(x) for x in self.references]
            scores = scoring.classification_metrics(ints, refs, self.task.num_labels)
            # How many labels the adapter gave at all: 1 means it answers every row the same,
            # the usual sign of a learning rate too high for the data (docs/results.md).
            scores["predicted_classes"] = float(len(set(ints)))
        elif self.task.kind == REGRESSION:
            scores = scoring.regression_metrics(self.predictions, self.references)
        else:
            scores = {"perplexity": scoring.perplexity(eval_loss)}
        return {"eval_loss": eval_loss, **scores}
