"""Fold an adapter into its base model and save an ordinary transformers model directory.

The result loads with ``AutoModelFor*.from_pretrained(out_dir)`` and no adalora_core code:
ΔW = s·P·diag(λ)·Q is added to each adapted weight (transposed for GPT-2's Conv1D, which
stores in×out), the trained head is copied in, and label names go into the model config.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers.pytorch_utils import Conv1D

from adalora_core.atomic import atomic_directory
from adalora_core.formats.bundle import AdapterWeights, BundleError, read_adapter
from adalora_core.hf_loading import load_model, load_tokenizer
from adalora_core.tasks import TaskSpec


def merge_into(model: torch.nn.Module, adapter: AdapterWeights) -> torch.nn.Module:
    """Add every module's ΔW to the base weight and load the head, in place."""
    with torch.no_grad():
        for path, delta in adapter.modules.items():
            try:
                layer = model.get_submodule(path)
            except AttributeError as exc:
                raise BundleError(f"base model has no module {path!r}") from exc
            update = delta.delta_weight()
            if isinstance(layer, Conv1D):
                update = update.t()
            if update.shape != layer.weight.shape:
                raise BundleError(
                    f"module {path!r}: ΔW {tuple(update.shape)} does not fit weight "
                    f"{tuple(layer.weight.shape)}"
                )
            layer.weight += update.to(layer.weight.dtype)
        if adapter.head:
            own = model.state_dict()
            unknown = sorted(set(adapter.head) - set(own))
            if unknown:
                raise BundleError(f"base model has no head tensors {unknown}")
            model.load_state_dict(dict(adapter.head), strict=False)
    return model


def save_merged(
    base_model_path: str | Path,
    adapter: AdapterWeights | Path,
    out_dir: Path,
    task: TaskSpec | None = None,
) -> Path:
    """Write the merged model and its tokenizer; the directory appears complete or not at all."""
    weights = adapter if isinstance(adapter, AdapterWeights) else read_adapter(Path(adapter))
    spec = task if task is not None else TaskSpec.from_json(weights.meta.task)
    tokenizer = load_tokenizer(base_model_path)
    model = load_model(base_model_path, spec, tokenizer)
    merge_into(model, weights)

    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
