"""Export an AdaLoRA bundle as a plain PEFT LoRA adapter, for servers that only know LoRA.

Each module's triplet folds into LoRA's two factors: A' = diag(s·λ)·Q (r×in) and B' = P, with
a per-module rank (``rank_pattern``) and ``alpha_pattern`` equal to that rank so that PEFT's
LoRA scaling alpha/r is exactly 1. Modules whose rank fell to 0 contribute nothing and are
left out of ``target_modules``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from adalora_core.atomic import atomic_directory
from adalora_core.formats.bundle import (
    KEY_PREFIX,
    META_FILE,
    PEFT_CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterWeights,
    BundleError,
    read_adapter,
)


def lora_factors(adapter: AdapterWeights) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(A', B') per module with a nonzero rank; B'·A' equals the module's ΔW."""
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for path, delta in adapter.modules.items():
        if delta.rank == 0:
            continue
        a = delta.lora_A.float() * (delta.lora_E.float() * delta.scaling)
        factors[path] = (a.contiguous(), delta.lora_B.float().contiguous())
    return factors


def lora_config(adapter: AdapterWeights, ranks: dict[str, int]) -> dict[str, Any]:
    source = adapter.peft_config
    first_rank = next(iter(ranks.values()))
    return {
        "peft_type": "LORA",
        "task_type": source.get("task_type"),
        "base_model_name_or_path": source.get("base_model_name_or_path"),
        "r": first_rank,
        "lora_alpha": first_rank,
        "rank_pattern": dict(ranks),
        "alpha_pattern": dict(ranks),
        "target_modules": sorted(ranks),
        "modules_to_save": source.get("modules_to_save"),
        "fan_in_fan_out": bool(source.get("fan_in_fan_out", False)),
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def export_lora(adapter: AdapterWeights | Path, out_dir: Path) -> Path:
    """Write ``adapter_config.json`` (peft_type LORA) and ``adapter_model.safetensors``."""
    weights = adapter if isinstance(adapter, AdapterWeights) else read_adapter(Path(adapter))
    factors = lora_factors(weights)
    if not factors:
        raise BundleError("every module has rank 0: there is no LoRA update to export")
    state: dict[str, torch.Tensor] = {}
    for path, (a, b) in factors.items():
        state[f"{KEY_PREFIX}{path}.lora_A.weight"] = a
        state[f"{KEY_PREFIX}{path}.lora_B.weight"] = b
    for name, tensor in weights.head.items():
        state[f"{KEY_PREFIX}{name}"] = tensor.detach().contiguous().cpu()
    config = lora_config(weights, {path: a.shape[0] for path, (a, _) in factors.items()})

    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / PEFT_CONFIG_FILE).write_text(json.dumps(config, indent=2))
        # Provenance for people; LoRA servers ignore it.
        (tmp / META_FILE).write_text(json.dumps(weights.meta.to_json(), indent=2))
    return out_dir
