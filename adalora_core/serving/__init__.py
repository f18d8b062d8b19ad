"""Multi-adapter inference: one shared base per model, many AdaLoRA adapters per batch.

- `grouped.py`: the routed low-rank op (`RoutedLinear`, `Routing`, `fold_delta`).
- `heads.py`: per-row task heads on a shared sequence-classification base.
- `generation.py`: generation parameters and routed `generate()` for LM adapters.
- `cache.py`: the two-tier adapter cache and its state machine.
- `engine.py`: `InferenceEngine` (bases, adapter loading, one routed forward per batch).
- `batcher.py`: `DynamicBatcher` (gathers concurrent requests into one forward).
- `malloc.py`: glibc allocator tuning applied at engine start.
"""

from adalora_core.serving.batcher import DynamicBatcher
from adalora_core.serving.cache import (
    AdapterCache,
    AdapterCorrupt,
    AdapterIncompatible,
    AdapterNotFound,
    AdapterState,
    AdapterTooLarge,
)
from adalora_core.serving.engine import (
    AdapterBlob,
    AdapterSource,
    BaseModelUnavailable,
    EngineSettings,
    InferenceEngine,
)

__all__ = [
    "AdapterBlob",
    "AdapterCache",
    "AdapterCorrupt",
    "AdapterIncompatible",
    "AdapterNotFound",
    "AdapterSource",
    "AdapterState",
    "AdapterTooLarge",
    "BaseModelUnavailable",
    "DynamicBatcher",
    "EngineSettings",
    "InferenceEngine",
]
