"""Scoring on the validation rows: predictions collected batch by batch, turned into the task's
metric set (``adalora_core.scoring``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from adalora_core import scoring
from adalora_core.encoding import IGNORE_INDEX
from adalora_core.tasks import CAUSAL_LM, CLASSIFICATION, REGRESSION, TaskSpec


class EvalAccumulator:
    """Collects predictions batch by batch and turns them into the task's metric set."""

    def __init__(self, task: TaskSpec) -> None:
        self.task = task
        self.predictions: list[float] = []
        self.references: list[float] = []
        self.loss_sum = 0.0
        self.loss_count = 0

    def add(self, outputs: Any, batch: Mapping[str, torch.Tensor]) -> None:
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
