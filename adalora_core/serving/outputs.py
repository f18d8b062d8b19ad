"""What a row's answer looks like, per task: labels and scores, a value, or an embedding."""

from __future__ import annotations

from typing import Any

import torch

from adalora_core.serving.loading import LoadedAdapter, head_width


def head_outputs(adapter: LoadedAdapter, logits: torch.Tensor) -> list[dict[str, Any]]:
    if adapter.task == "regression":
        return [{"value": float(v)} for v in logits[:, 0].tolist()]
    assert adapter.heads is not None
    count = len(adapter.labels) or head_width(adapter.heads)
    names = adapter.labels or tuple(f"LABEL_{i}" for i in range(count))
    probs = torch.softmax(logits[:, :count], dim=-1)
    out: list[dict[str, Any]] = []
    for row in probs.tolist():
        best = max(range(count), key=row.__getitem__)
        out.append(
            {
                "label": names[best],
                "score": row[best],
                "scores": dict(zip(names, row, strict=True)),
            }
        )
    return out


def embeddings(hidden: torch.Tensor, mask: torch.Tensor) -> list[dict[str, Any]]:
    """The attention-masked mean of the final hidden states, per row."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return [{"embedding": row} for row in pooled.float().tolist()]
