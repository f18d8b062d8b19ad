"""Scoring on the validation rows: a pass over them in batches (:class:`Evaluator`), the
predictions collected batch by batch and turned into the task's metric set
(:class:`EvalAccumulator`, with ``adalora_core.scoring``). A language-model task also gets its
mean token accuracy and, given the tokenizer, the exact match of greedy answers
(``exact_match.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from adalora_core import scoring
from adalora_core.encoding import IGNORE_INDEX, Collate, to_device
from adalora_core.precision import MixedPrecision
from adalora_core.tasks import CAUSAL_LM, CLASSIFICATION, REGRESSION, TaskSpec
from adalora_core.training.adaptation import Adaptation
from adalora_core.training.exact_match import exact_match
from adalora_core.training.token_accuracy import token_hits

# Evaluation keeps no gradients, so its batches can be this many times the training batch.
EVAL_BATCH_FACTOR = 2


class Evaluator:
    """Scores an adapted model on the encoded validation rows."""

    def __init__(
        self,
        task: TaskSpec,
        eval_data: list[dict[str, Any]],
        collate: Collate,
        batch_size: int,
        mixed: MixedPrecision,
        device: torch.device,
        tokenizer: Any = None,
    ) -> None:
        self.task = task
        self.tokenizer = tokenizer  # for the exact match of a generative task's answers
        self.eval_data = eval_data
        self.collate = collate
        self.batch_size = batch_size * EVAL_BATCH_FACTOR
        self.mixed = mixed
        self.device = device
        # Metrics do not depend on row order, so evaluate in length order: least padding.
        self.order = sorted(range(len(eval_data)), key=lambda i: len(eval_data[i]["input_ids"]))

    @torch.no_grad()
    def evaluate(self, adapted: Adaptation) -> dict[str, float]:
        """The metrics; the model is left in training mode."""
        adapted.eval()
        accumulator = EvalAccumulator(self.task)
        for start in range(0, len(self.order), self.batch_size):
            rows = [self.eval_data[i] for i in self.order[start : start + self.batch_size]]
            batch = to_device(self.collate(rows), self.device)
            with self.mixed.autocast():
                outputs = adapted(**batch)
            accumulator.add(outputs, batch)
        metrics = accumulator.result()
        if self.task.is_language_modelling and self.tokenizer is not None:
            causal = self.task.kind == CAUSAL_LM
            score, scored = exact_match(
                adapted,
                self.tokenizer,
                self.eval_data,
                causal,
                self.batch_size,
                self.mixed,
                self.device,
            )
            metrics.update(exact_match=score, exact_match_rows=float(scored))
        adapted.train()
        return metrics


class EvalAccumulator:
    """Collects predictions batch by batch and turns them into the task's metric set."""

    def __init__(self, task: TaskSpec) -> None:
        self.task = task
        self.predictions: list[float] = []
        self.references: list[float] = []
        self.loss_sum = 0.0
        self.loss_count = 0
        self.tokens_right = 0

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
            right, _ = token_hits(logits, labels, causal=self.task.kind == CAUSAL_LM)
            self.tokens_right += int(right)
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
            scores = {
                "perplexity": scoring.perplexity(eval_loss),
                "mean_token_accuracy": self.tokens_right / max(self.loss_count, 1),
            }
        return {"eval_loss": eval_loss, **scores}
