"""Rows become model inputs: tokenized once, unpadded, then padded per batch by the collator.

What each task kind learns from: the label of a classification or regression row; the target
tokens of a seq2seq row; for causal LM the completion (prompt/completion rows), the assistant
turns (chat rows) or the whole text. Tokens the loss must not see carry ``IGNORE_INDEX``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from adalora_core.chat_template import TOOLS_KEY, encode_chat, is_chat
from adalora_core.errors import ConfigError
from adalora_core.tasks import (
    CAUSAL_LM,
    CLASSIFICATION,
    REGRESSION,
    TaskSpec,
    check_rows,
    label_index,
    regression_target,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

# The label PyTorch's cross-entropy skips by default.
IGNORE_INDEX = -100
# Encoded rows -> one padded batch of tensors.
Collate = Callable[[Sequence[Mapping[str, Any]]], "dict[str, torch.Tensor]"]


def encode_rows(
    task: TaskSpec,
    rows: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    split: str = "train_rows",
) -> list[dict[str, Any]]:
    """Tokenize once, unpadded; batches are padded per batch by :func:`make_collator`."""
    check_rows(task, rows, split)
    return [
        _encode_row(task, row, tokenizer, max_length, f"{split}[{index}]")
        for index, row in enumerate(rows)
    ]


def _encode_row(
    task: TaskSpec,
    row: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    where: str,
) -> dict[str, Any]:
    if task.kind in (CLASSIFICATION, REGRESSION):
        pair = row[task.text_pair_column] if task.text_pair_column else None
        features = dict(
            tokenizer(row[task.text_column], pair, truncation=True, max_length=max_length)
        )
        if task.kind == CLASSIFICATION:
            features["labels"] = label_index(task, row[task.label_column], where)
        else:
            features["labels"] = regression_target(row[task.label_column], where)
    elif task.kind == CAUSAL_LM and is_chat(row[task.text_column]):
        tools = row.get(TOOLS_KEY) if isinstance(row.get(TOOLS_KEY), list) else None
        features = _encode_chat_row(row[task.text_column], tokenizer, max_length, where, tools)
        _require_supervision(features, "assistant", max_length, where)
    elif task.kind == CAUSAL_LM:
        features = _encode_causal(task, row, tokenizer, max_length)
        if task.target_column:
            _require_supervision(features, "completion", max_length, where)
    else:
        features = dict(tokenizer(row[task.text_column], truncation=True, max_length=max_length))
        target = tokenizer(text_target=row[task.target_column], truncation=True)
        features["labels"] = list(target["input_ids"])[:max_length]
    return features


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


def _encode_chat_row(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    where: str,
    tools: Sequence[Mapping[str, Any]] | None,
) -> dict[str, Any]:
    """The loss on the assistant's tokens only; the row's tool definitions rendered with it."""
    chat = encode_chat(messages, tokenizer, where, tools)
    labels = [
        token if assistant else IGNORE_INDEX
        for token, assistant in zip(chat.ids, chat.assistant, strict=True)
    ]
    ids, labels = chat.ids[:max_length], labels[:max_length]
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


def make_collator(task: TaskSpec, tokenizer: PreTrainedTokenizerBase) -> Collate:
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


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A collated batch on the training device."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    # An asynchronous copy needs a pinned source; from pageable memory it would block anyway.
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
