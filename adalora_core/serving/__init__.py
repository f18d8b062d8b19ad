"""Multi-adapter inference: one shared base per model, many AdaLoRA adapters per batch.

- `grouped.py`: the routed low-rank op (`RoutedLinear`, `Routing`, `fold_delta`).
- `heads.py`: per-row task heads on a shared sequence-classification base.
- `generation.py`: generation parameters and routed `generate()` for LM adapters.
- `bases.py`: shared base models, loaded and wrapped once.
- `loading.py`: adapter sources and loading an adapter onto its base.
- `cache.py`: the two-tier adapter cache and its state machine.
- `requests.py`: a request checked and tokenized (`Prepared`).
- `constraints.py`: JSON grammars (llguidance) that mask a decode row's logits.
- `forward.py`: one routed forward (or generate) for a batch of many adapters.
- `forward_process.py`: encoder forwards in a process of their own on CPU (no GIL contention).
- `outputs.py`: each row's answer per task.
- `engine.py`: `InferenceEngine`, which wires the parts together.
- `batcher.py`: `DynamicBatcher` (gathers concurrent requests into one forward).
- `malloc.py`: glibc allocator tuning applied at engine start.
"""

from adalora_core.serving.bases import BaseModelUnavailable
from adalora_core.serving.batcher import DynamicBatcher
from adalora_core.serving.cache import (
    AdapterCache,
    AdapterCorrupt,
    AdapterIncompatible,
    AdapterNotFound,
    AdapterState,
    AdapterTooLarge,
)
from adalora_core.serving.engine import EngineSettings, InferenceEngine
from adalora_core.serving.loading import AdapterBlob, AdapterSource

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
