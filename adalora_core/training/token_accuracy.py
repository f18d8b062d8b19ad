"""Mean token accuracy of a language-model task: how often the model's most likely next token
is the learned one, over the tokens the loss reads (the assistant's, or the completion's). It
says whether the content was learned where the loss only says how surprised the model still is
(OpenAI reports it as ``train_mean_token_accuracy`` and ``valid_mean_token_accuracy``)."""

from __future__ import annotations

import torch

from adalora_core.encoding import IGNORE_INDEX


def token_hits(
    logits: torch.Tensor, labels: torch.Tensor, causal: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens predicted right, tokens counted) as 0-d tensors on the logits' device: summing
    them over batches needs no host sync. A causal LM predicts label t from position t-1."""
    if causal:
        logits, labels = logits[:, :-1, :], labels[:, 1:]
    counted = labels != IGNORE_INDEX
    right = (logits.argmax(dim=-1) == labels) & counted
    return right.sum(), counted.sum()
