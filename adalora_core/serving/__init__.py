"""Multi-adapter inference: one shared base per model, many AdaLoRA adapters per batch.

- `grouped.py`: the routed low-rank op (`RoutedLinear`, `Routing`, `fold_delta`, `group_rows`).
- `heads.py`: per-row task heads on a shared sequence-classification base.
- `generation.py`: generation parameters and routed `generate()` for seq2seq adapters.
- `bases.py`: shared base models, loaded and wrapped once.
- `sources.py`: where adapters' bytes come from (`AdapterRef`, `AdapterSource`) and its errors.
- `loading.py`: an adapter's bytes folded onto its base.
- `cache.py`: the two-tier adapter cache and its state machine.
- `requests.py`: a request's rows tokenized (`Prepared`).
- `constraints.py`: JSON grammars (llguidance) that mask a decode row's logits.
- `forward.py`: one routed forward (or generate) for a batch of many adapters.
- `forward_process.py`: encoder forwards in a process of their own on CPU (no GIL contention).
- `decoding.py`: continuous batched decoding of causal-LM rows.
- `handles.py`: the caller's handle on a decoding row and its events.
- `text_stream.py`: a row's text as published (stop strings, partial characters).
- `sampling.py`: temperature and top-p sampling with a row's own generator.
- `outputs.py`: each row's answer per task.
- `engine.py`: `InferenceEngine`, which wires the parts together.
- `batcher.py`: `DynamicBatcher` (gathers concurrent requests into one forward).
- `malloc.py`: glibc allocator tuning applied at engine start.
"""

from adalora_core.serving.bases import BaseModelUnavailable
from adalora_core.serving.batcher import DynamicBatcher
from adalora_core.serving.cache import AdapterCache, AdapterState
from adalora_core.serving.engine import EngineSettings, InferenceEngine
from adalora_core.serving.sources import (
    AdapterBlob,
    AdapterCorrupt,
    AdapterIncompatible,
    AdapterNotFound,
    AdapterRef,
    AdapterSource,
    AdapterTooLarge,
    AdapterUnavailable,
)

__all__ = [
    "AdapterBlob",
    "AdapterCache",
    "AdapterCorrupt",
    "AdapterIncompatible",
    "AdapterNotFound",
    "AdapterRef",
    "AdapterSource",
    "AdapterState",
    "AdapterTooLarge",
    "AdapterUnavailable",
    "BaseModelUnavailable",
    "DynamicBatcher",
    "EngineSettings",
    "InferenceEngine",
]
