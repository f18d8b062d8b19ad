"""PEFT's AdaLoRA format: save our adapters so PEFT loads them (adapters PEFT saved come in
through ``adalora_core.formats.peft_import``).

PEFT computes an AdaLoRA module's output as x·(Q∘λ)ᵀ·Pᵀ · lora_alpha / ranknum with ranknum
fixed at init_r (pruning keeps it), which is our scaling lora_alpha / init_r. It reloads
pruned tensors by first building every module at init_r and then cutting it down with
``rank_pattern`` (keys "<module>.lora_E" → list[bool] of length init_r), so the config must
carry that pattern and a schedule PEFT accepts (tinit < total_step - tfinal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from adalora_core.formats.bundle import (
    AdapterMeta,
    AdapterWeights,
    BundleError,
    ModuleDelta,
    write_bundle,
)
from adalora_core.inject import set_submodule
from adalora_core.layers import LoRALinear, SVDLinear
from adalora_core.tasks import TaskSpec


def adapter_weights(model: nn.Module, meta: AdapterMeta) -> AdapterWeights:
    """The kept triplets and head tensors of an AdaLoraModel (or the LoRA baseline, whose
    modules become triplets with λ = 1)."""
    pattern: dict[str, list[bool]] = model.rank_pattern()
    modules: dict[str, ModuleDelta] = {}
    fan_in_fan_out = False
    with torch.no_grad():
        for path, layer in model.adapted.items():
            keep = torch.tensor(pattern[path], dtype=torch.bool, device=layer.lora_A.device)
            if isinstance(layer, LoRALinear):
                lora_e = torch.ones(layer.rank, 1, device=layer.lora_A.device)
            else:
                lora_e = layer.lora_E
            modules[path] = ModuleDelta(
                lora_A=layer.lora_A[keep].detach().cpu().clone(),
                lora_B=layer.lora_B[:, keep].detach().cpu().clone(),
                lora_E=lora_e[keep].detach().cpu().clone(),
                scaling=float(layer.scaling),
            )
            fan_in_fan_out = fan_in_fan_out or layer.fan_in_fan_out
        head = {
            f"{path}.{name}": tensor.detach().cpu().clone()
            for path in model.head_paths
            for name, tensor in model.base_model.get_submodule(path).state_dict().items()
        }
    schedule = getattr(model, "schedule", None)
    config = peft_config(
        meta,
        rank_pattern=pattern,
        head_paths=list(model.head_paths),
        fan_in_fan_out=fan_in_fan_out,
        schedule=schedule.to_dict() if schedule is not None else None,
        adalora=getattr(model, "config", None),
    )
    return AdapterWeights(meta=meta, peft_config=config, modules=modules, head=head)


def peft_config(
    meta: AdapterMeta,
    *,
    rank_pattern: dict[str, list[bool]],
    head_paths: list[str],
    fan_in_fan_out: bool,
    schedule: dict[str, int] | None,
    adalora: Any = None,
) -> dict[str, Any]:
    """adapter_config.json for PEFT's AdaLoraConfig (unlisted fields take PEFT's defaults)."""
    if schedule is None:
        # A fixed-rank adapter was never scheduled; PEFT only needs a schedule it accepts.
        schedule = {"total_steps": 2, "t_init": 0, "t_final": 0, "delta_t": 1}
    task = TaskSpec.from_json(meta.task)
    return {
        "peft_type": "ADALORA",
        "task_type": task.peft_task_type,
        "base_model_name_or_path": meta.base_model,
        "init_r": meta.init_r,
        "target_r": meta.target_r,
        "lora_alpha": meta.lora_alpha,
        "lora_dropout": float(getattr(adalora, "lora_dropout", 0.0)),
        "beta1": float(getattr(adalora, "beta1", 0.85)),
        "beta2": float(getattr(adalora, "beta2", 0.85)),
        "orth_reg_weight": float(getattr(adalora, "orth_reg_weight", 0.0)),
        "total_step": schedule["total_steps"],
        "tinit": schedule["t_init"],
        "tfinal": schedule["t_final"],
        "deltaT": schedule["delta_t"],
        "target_modules": sorted(rank_pattern),
        "rank_pattern": {f"{path}.lora_E": list(keep) for path, keep in rank_pattern.items()},
        "modules_to_save": head_paths or None,
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "init_lora_weights": True,
        "inference_mode": True,
    }


def save_adapter(model: nn.Module, out_dir: Path, meta: AdapterMeta) -> Path:
    """Write the bundle (PEFT AdaLoRA files pruned to the kept triplets, plus adalora.json)."""
    return write_bundle(adapter_weights(model, meta), Path(out_dir))


def apply_adapter(model: nn.Module, adapter: AdapterWeights) -> nn.Module:
    """Put the bundle's pruned SVDLinear layers and head weights into a freshly loaded base
    model, in place (unmerged: outputs equal the trained AdaLoraModel's)."""
    init_r = adapter.meta.init_r
    with torch.no_grad():
        for path, delta in adapter.modules.items():
            try:
                base_layer = model.get_submodule(path)
            except AttributeError as exc:
                raise BundleError(f"base model has no module {path!r}") from exc
            layer = SVDLinear(
                base_layer, rank=delta.rank, init_r=init_r, lora_alpha=adapter.meta.lora_alpha
            )
            layer.scaling = delta.scaling
            layer.lora_A.copy_(delta.lora_A)
            layer.lora_B.copy_(delta.lora_B)
            layer.lora_E.copy_(delta.lora_E)
            set_submodule(model, path, layer)
        if adapter.head:
            unknown = sorted(set(adapter.head) - set(model.state_dict()))
            if unknown:
                raise BundleError(f"base model has no head tensors {unknown}")
            model.load_state_dict(dict(adapter.head), strict=False)
    return model.eval()
