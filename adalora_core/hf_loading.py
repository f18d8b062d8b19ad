"""A base model and its tokenizer loaded from a directory (transformers' Auto classes), and the
head modules a task trains in full.

Torch and transformers load only when a function is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from adalora_core.tasks import CLASSIFICATION, REGRESSION, TaskSpec

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Sequence-classification heads by model family; they are trained and saved with the adapter.
SEQ_CLS_HEADS = ("classifier", "score", "classification_head")
POOLER = "pooler"


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
