"""Adapters: how their bytes become folded tensors on a shared base.

Loading an adapter only builds small folded tensors (`LowRankDelta`) indexed like the base's
routed layers, plus its task head; the cache in `cache.py` decides when this runs.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adalora_core.errors import ConfigError
from adalora_core.serving.bases import BaseModels, SharedBase
from adalora_core.serving.grouped import LowRankDelta, fold_delta
from adalora_core.serving.heads import build_heads
from adalora_core.serving.sources import (
    AdapterCorrupt,
    AdapterIncompatible,
    AdapterRef,
    AdapterSource,
)
from adalora_core.tasks import MODEL_KIND

Parser = Callable[[bytes], Any]


@dataclass
class LoadedAdapter:
    """What a cached adapter is: folded low-rank tensors per routed layer, its head, its labels."""

    adapter_id: str
    base: SharedBase
    task: str
    labels: tuple[str, ...]
    max_length: int
    layers: tuple[LowRankDelta | None, ...]
    heads: dict[str, nn.Module] | None
    nbytes: int

    def to(self, device: torch.device) -> LoadedAdapter:
        """A copy on ``device``; this one is left as it is, so a batch still running on it is
        not disturbed. On a CUDA machine the host copy is pinned, and copies from pinned memory
        run without blocking."""
        layers = tuple(
            None if d is None else LowRankDelta(_moved(d.q, device), _moved(d.p, device))
            for d in self.layers
        )
        heads = None
        if self.heads is not None:
            heads = {
                name: module
                if module is self.base.head_templates.get(name)
                else _moved_module(module, device)
                for name, module in self.heads.items()
            }
        return LoadedAdapter(
            self.adapter_id,
            self.base,
            self.task,
            self.labels,
            self.max_length,
            layers,
            heads,
            self.nbytes,
        )


def _moved(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if tensor.device == device:
        return tensor
    moved = tensor.to(device, non_blocking=tensor.is_pinned())
    if device.type == "cpu" and torch.cuda.is_available():
        moved = moved.pin_memory()
    return moved


def _moved_module(module: nn.Module, device: torch.device) -> nn.Module:
    """nn.Module.to moves in place; a head may be in use, so move a copy."""
    params = list(module.parameters())
    if all(p.device == device for p in params):
        return module
    pinned = bool(params) and all(p.is_pinned() for p in params)
    copied = copy.deepcopy(module).to(device, non_blocking=pinned)
    if device.type == "cpu" and torch.cuda.is_available():
        with torch.no_grad():
            for param in copied.parameters():
                param.data = param.data.pin_memory()
    return copied


def default_parser(data: bytes) -> Any:
    from adalora_core.formats.bundle import read_adapter

    return read_adapter(data)


def task_kind(meta: Any) -> str:
    task = meta.task
    kind = task.get("kind") if isinstance(task, Mapping) else task
    if kind not in MODEL_KIND:
        raise ConfigError("task", f"unsupported task kind {kind!r}")
    return str(kind)


class AdapterLoader:
    """Reads, checks and folds one adapter onto its base (the cache's ``load``)."""

    def __init__(
        self,
        source: AdapterSource,
        bases: BaseModels,
        parser: Parser,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.source = source
        self.bases = bases
        self.parser = parser
        self.device = device
        self.dtype = dtype

    def __call__(self, ref: AdapterRef) -> LoadedAdapter:
        adapter_id = ref.adapter_id
        blob = self.source.read(ref)
        expected = ref.sha256 or blob.sha256
        if blob.sha256 != expected or (
            not blob.verified and hashlib.sha256(blob.data).hexdigest() != expected
        ):
            raise AdapterCorrupt(adapter_id, "sha256 of the stored artifact does not match")
        try:
            weights = self.parser(blob.data)
        except ValueError as exc:  # BundleError and friends: the bytes are not a bundle
            raise AdapterCorrupt(adapter_id, str(exc)) from exc
        try:
            kind = task_kind(weights.meta)
        except ConfigError as exc:
            raise AdapterIncompatible(f"adapter {adapter_id}: {exc}") from exc
        base = self.bases.get(ref.base_model or weights.meta.base_model, MODEL_KIND[kind])
        layers: list[LowRankDelta | None] = [None] * len(base.layer_index)
        for path, delta in weights.modules.items():
            index = base.layer_index.get(path.removeprefix("base_model.model."))
            if index is None:
                raise AdapterIncompatible(
                    f"adapter {adapter_id}: module {path!r} is not a projection of {base.name}"
                )
            folded = fold_delta(delta.lora_A, delta.lora_B, delta.lora_E, delta.scaling)
            if folded is not None:
                layers[index] = LowRankDelta(
                    folded.q.to(self.device, self.dtype), folded.p.to(self.device, self.dtype)
                )
        heads = None
        labels: tuple[str, ...] = ()
        nbytes = sum(d.nbytes for d in layers if d is not None)
        if base.kind == "sequence-classification":
            try:
                heads = build_heads(base.head_templates, weights.head, self.dtype)
            except ConfigError as exc:
                raise AdapterIncompatible(f"adapter {adapter_id}: {exc}") from exc
            heads = {
                n: m if m is base.head_templates[n] else m.to(self.device) for n, m in heads.items()
            }
            nbytes += sum(t.numel() * t.element_size() for t in weights.head.values())
            labels = tuple(weights.meta.labels or ())
            width = head_width(heads)
            if kind == "classification" and labels and len(labels) != width:
                raise AdapterCorrupt(
                    adapter_id, f"{len(labels)} label names for a head of {width} outputs"
                )
        elif weights.head:
            raise AdapterIncompatible(
                f"adapter {adapter_id}: a {kind} adapter carries head weights"
            )
        max_length = min(int(getattr(weights.meta, "max_length", base.max_length)), base.max_length)
        return LoadedAdapter(
            adapter_id, base, kind, labels, max_length, tuple(layers), heads, nbytes
        )


def head_width(heads: dict[str, nn.Module]) -> int:
    """Outputs of the last Linear of the last top-level head (the logits; poolers are nested)."""
    widths = [
        m.out_features
        for name, head in heads.items()
        if "." not in name
        for m in head.modules()
        if isinstance(m, nn.Linear)
    ]
    return widths[-1]
