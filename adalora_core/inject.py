"""Which modules of a transformers model get an adapter, and how to name them for reports."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn

from adalora_core.errors import ConfigError
from adalora_core.layers import ADAPTABLE_TYPES

_BERT_LIKE = (
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)

# Every attention projection and every FFN linear, as the AdaLoRA paper adapts them.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "deberta-v2": (
        "query_proj",
        "key_proj",
        "value_proj",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ),
    "mpnet": ("q", "k", "v", "o", "intermediate.dense", "output.dense"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "bart": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
    "t5": ("q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1"),
}

# Task heads are never adapted, whether or not the caller lists them in head_modules.
KNOWN_HEAD_NAMES = ("classifier", "score", "classification_head", "lm_head", "qa_outputs")

# Path segments that only group modules and carry no meaning for a heatmap row.
_GROUPING_SEGMENTS = ("attention.self.",)


def is_adaptable(module: nn.Module) -> bool:
    return isinstance(module, ADAPTABLE_TYPES)


def resolve_heads(model: nn.Module, head_modules: Iterable[str]) -> list[str]:
    """Module paths of the task heads named (by path or path suffix); missing names are skipped
    because one task lists the head names of several families (e.g. classifier and score)."""
    wanted = tuple(head_modules)
    found: list[str] = []
    for path, _ in model.named_modules():
        named = path and any(_matches_suffix(path, name) for name in wanted)
        if named and not any(path.startswith(head + ".") for head in found):
            found.append(path)
    return found


def find_targets(
    model: nn.Module,
    patterns: Sequence[str] | str | None,
    head_modules: Iterable[str] = (),
) -> list[str]:
    """Paths of the Linear/Conv1D modules to adapt, in the model's module order.

    `patterns`: suffixes of the dotted path (like PEFT's target_modules), one regex string
    matched against the full path, or None for the defaults of `model.config.model_type`."""
    heads = resolve_heads(model, head_modules)
    candidates = [
        path
        for path, module in model.named_modules()
        if path and is_adaptable(module) and not _inside_head(path, heads)
    ]
    if patterns is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGETS:
            raise ConfigError(
                "adalora.target_modules",
                f"no default targets for model type {model_type!r} (known: "
                f"{sorted(DEFAULT_TARGETS)}); set target_modules to some of: "
                f"{candidate_names(candidates)}",
            )
        patterns = DEFAULT_TARGETS[model_type]
    if isinstance(patterns, str):
        regex = re.compile(patterns)
        selected = [path for path in candidates if regex.fullmatch(path)]
    else:
        selected = [path for path in candidates if any(_matches_suffix(path, p) for p in patterns)]
    if not selected:
        raise ConfigError(
            "adalora.target_modules",
            f"{patterns!r} matches no Linear/Conv1D module of this model; candidates: "
            f"{candidate_names(candidates)}",
        )
    return selected


def candidate_names(paths: Iterable[str]) -> list[str]:
    """Deduplicated module names a user could target: the path after the layer index."""
    names = set()
    for path in paths:
        parts = path.split(".")
        numeric = [i for i, part in enumerate(parts) if part.isdigit()]
        names.add(".".join(parts[numeric[-1] + 1 :]) if numeric else path)
    return sorted(names)


def module_layer_and_kind(name: str) -> tuple[int | None, str]:
    """(layer index, kind) of a module path for the layer × kind rank heatmap, e.g.
    "bert.encoder.layer.3.attention.self.query" -> (3, "query"),
    "transformer.h.0.mlp.c_proj" -> (0, "mlp.c_proj"),
    "decoder.block.1.layer.1.EncDecAttention.q" -> (1, "decoder.EncDecAttention.q").
    A path outside any numbered layer gives (None, path)."""
    parts = name.split(".")
    index = next((i for i, part in enumerate(parts) if part.isdigit()), None)
    if index is None:
        return None, name
    rest = ".".join(parts[index + 1 :]) + "."
    for segment in _GROUPING_SEGMENTS:
        rest = rest.replace(segment, "")
    # T5 nests "layer.<k>" sub-blocks inside each block; the sub-block index is not a layer.
    rest = re.sub(r"(^|\.)layer\.\d+\.", r"\1", rest).strip(".")
    if "decoder" in parts[:index]:
        rest = f"decoder.{rest}"
    return int(parts[index]), rest


def rank_modules(ranks: dict[str, int]) -> list[dict[str, Any]]:
    """Each module's rank with its place in the heatmap: {name, layer, kind, rank}."""
    return [
        {"name": name, "layer": layer, "kind": kind, "rank": int(rank)}
        for name, rank in ranks.items()
        for layer, kind in [module_layer_and_kind(name)]
    ]


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def _matches_suffix(path: str, pattern: str) -> bool:
    pattern = pattern.strip(".")
    return path == pattern or path.endswith("." + pattern)


def _inside_head(path: str, heads: Sequence[str]) -> bool:
    if any(path == head or path.startswith(head + ".") for head in heads):
        return True
    return any(part in KNOWN_HEAD_NAMES for part in path.split("."))
