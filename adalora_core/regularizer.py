"""AdaLoRA's orthogonality penalty R = mean over every P and Q of ‖PᵀP − I‖_F / ‖QQᵀ − I‖_F.

Matrices of one shape are stacked and handled by one batched matmul and one batched norm, so the
cost is a few ops per distinct shape rather than two small matmuls per module.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor

from adalora_core.layers import SVDLinear


class OrthogonalityRegularizer:
    """Each P and each Q is one term of the mean (PEFT's definition); rank-0 layers are skipped."""

    def __init__(self, layers: Sequence[SVDLinear]) -> None:
        # Q is r×in (QQᵀ); P is out×r, stored as its own tensor, so group it by shape too.
        groups: dict[tuple[str, tuple[int, ...]], list[SVDLinear]] = defaultdict(list)
        for layer in layers:
            if layer.rank == 0:
                continue
            groups[("A", tuple(layer.lora_A.shape))].append(layer)
            groups[("B", tuple(layer.lora_B.shape))].append(layer)
        self._groups = list(groups.items())
        self.num_terms = sum(len(members) for _, members in self._groups)

    def __call__(self) -> Tensor:
        if self.num_terms == 0:
            return torch.zeros(())
        device_type = self._groups[0][1][0].lora_A.device.type
        # Under bf16 autocast the Gram matrices would be formed in bf16, whose 8-bit mantissa
        # cannot resolve PᵀP − I near zero: the penalty is computed in fp32 whatever the loop does.
        with torch.autocast(device_type=device_type, enabled=False):
            return self._penalty()

    def _penalty(self) -> Tensor:
        parts = []
        for (kind, _), members in self._groups:
            if kind == "A":
                stacked = torch.stack([layer.lora_A for layer in members])
                gram = stacked @ stacked.mT
            else:
                stacked = torch.stack([layer.lora_B for layer in members])
                gram = stacked.mT @ stacked
            gram.diagonal(dim1=-2, dim2=-1).sub_(1.0)
            parts.append(torch.linalg.matrix_norm(gram).sum())
        return torch.stack(parts).sum() / self.num_terms
