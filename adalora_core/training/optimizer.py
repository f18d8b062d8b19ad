"""AdamW over the trainable weights and the learning-rate schedule.

Weight decay applies to the Q/P matrices and head weights, not to λ (it is masked to zero by
the allocator, and decaying singular values would fight the importance scores) nor to biases.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from adalora_core.training_config import TrainingConfig


def build_optimizer(
    named: Sequence[tuple[str, nn.Parameter]], training: TrainingConfig
) -> torch.optim.AdamW:
    decay = [p for n, p in named if p.ndim >= 2 and not n.endswith("lora_E")]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and not n.endswith("lora_E"))]
    groups = [
        {"params": decay, "weight_decay": training.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=training.learning_rate)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``ceil(warmup_ratio·T)`` updates, then linear decay to 0 at T."""
    warmup = math.ceil(warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
