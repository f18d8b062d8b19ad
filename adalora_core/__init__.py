"""AdaLoRA training, adapter formats and serving.

Names are imported lazily so that ``adalora_core.config`` and ``adalora_core.training_config``
(which the API server imports) stay free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ConfigError": "adalora_core.errors",
    "AdaLoraConfig": "adalora_core.config",
    "BudgetSchedule": "adalora_core.config",
    "TrainingConfig": "adalora_core.training_config",
    "total_updates": "adalora_core.training_config",
    "RunPlan": "adalora_core.run_plan",
    "plan_run": "adalora_core.run_plan",
    "TaskSpec": "adalora_core.tasks",
    "train": "adalora_core.trainer",
    "TrainCallbacks": "adalora_core.trainer",
    "ProgressEvent": "adalora_core.trainer",
    "TrainResult": "adalora_core.trainer",
    "inject_adalora": "adalora_core.adalora_model",
    "AdaLoraModel": "adalora_core.adalora_model",
    "AdapterMeta": "adalora_core.formats.bundle",
    "AdapterWeights": "adalora_core.formats.bundle",
    "ModuleDelta": "adalora_core.formats.bundle",
    "BundleError": "adalora_core.formats.bundle",
    "read_adapter": "adalora_core.formats.bundle",
    "zip_bundle": "adalora_core.formats.bundle",
    "save_adapter": "adalora_core.formats.peft",
    "import_peft_adapter": "adalora_core.formats.peft_import",
    "export_lora": "adalora_core.formats.lora",
    "save_merged": "adalora_core.formats.merged",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'adalora_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
