"""Shared base models: each loaded and wrapped once per (name, model kind), read-only after.

Every Linear of a base becomes a `RoutedLinear` and every seq-cls head a `RoutedHead` when it is
loaded; it is never merged or re-injected, so any number of adapters share it.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from adalora_core.serving.constraints import GrammarCompiler
from adalora_core.serving.grouped import wrap_linears
from adalora_core.serving.heads import route_heads
from adalora_core.tasks import AUTO_CLASS, ModelKind

log = logging.getLogger("adalora.serving")


class BaseModelUnavailable(RuntimeError):
    """The configured base model cannot be loaded (missing directory, unsupported class)."""


BaseFactory = Callable[[str, ModelKind], tuple[nn.Module, Any]]


@dataclass
class SharedBase:
    """One loaded base: wrapped once, read-only, forwards serialized by `lock`."""

    name: str
    kind: ModelKind
    model: nn.Module
    tokenizer: Any
    layer_index: dict[str, int]
    head_templates: dict[str, nn.Module]
    max_length: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    # HF fast tokenizers change their truncation state per call and are not safe to share
    # between threads (requests tokenize in their own threads).
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)
    last_hidden: list[torch.Tensor] = field(default_factory=list)
    _grammars: GrammarCompiler | None = field(default=None, repr=False)
    _grammars_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @functools.cached_property
    def eos_ids(self) -> frozenset[int]:
        """Every token that ends a generation: the generation config's, the model config's
        and the tokenizer's end-of-sequence ids (an instruct model's end-of-turn among them)."""
        ids: set[int] = set()
        for source in (getattr(self.model, "generation_config", None), self.model.config):
            ids.update(_ids(getattr(source, "eos_token_id", None)))
        ids.update(_ids(getattr(self.tokenizer, "eos_token_id", None)))
        return frozenset(ids)

    @property
    def grammars(self) -> GrammarCompiler:
        """This base's grammar compiler and cache, made when a request first asks for one."""
        with self._grammars_lock:
            if self._grammars is None:
                self._grammars = GrammarCompiler(
                    self.tokenizer, self.eos_ids, tokenizer_lock=self.tokenizer_lock
                )
            return self._grammars


def _ids(value: object) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, int)]
    return []


def default_base_factory(paths: Mapping[str, str]) -> BaseFactory:
    """Load bases from the configured name → directory map (no hub access is attempted). The
    map is read when a base is first loaded, so it may prepare a directory on demand."""

    def load(name: str, kind: ModelKind) -> tuple[nn.Module, Any]:
        import transformers

        path = paths.get(name, name)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        model = getattr(transformers, AUTO_CLASS[kind]).from_pretrained(path)
        return model, tokenizer

    return load


class BaseModels:
    """The bases one engine serves, loaded on first use only; thread-safe."""

    def __init__(
        self, factory: BaseFactory, device: torch.device, dtype: torch.dtype, max_length: int
    ) -> None:
        self.factory = factory
        self.device = device
        self.dtype = dtype
        self.max_length = max_length
        self._loaded: dict[tuple[str, ModelKind], SharedBase] = {}
        self._lock = threading.Lock()

    def loaded(self) -> list[tuple[str, ModelKind]]:
        """(name, kind) of every base in memory."""
        with self._lock:
            return list(self._loaded)

    def get(self, name: str, kind: ModelKind) -> SharedBase:
        """The shared base for (name, kind), loaded and wrapped on first use only."""
        with self._lock:
            found = self._loaded.get((name, kind))
            if found is None:
                found = self._loaded[(name, kind)] = self._load(name, kind)
            return found

    def _load(self, name: str, kind: ModelKind) -> SharedBase:
        try:
            model, tokenizer = self.factory(name, kind)
        except (OSError, ValueError, KeyError) as exc:
            # The cause names local paths: it goes to the log, not to the caller.
            log.error("base model %r (%s) cannot be loaded: %s", name, kind, exc)
            raise BaseModelUnavailable(f"base model {name!r} ({kind}) cannot be loaded") from exc
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if kind == "causal-lm":
            tokenizer.padding_side = "left"
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        model.to(device=self.device, dtype=self.dtype).eval()
        model.requires_grad_(False)
        limits = [self.max_length]
        for attr in ("max_position_embeddings", "n_positions"):
            value = getattr(model.config, attr, None)
            if isinstance(value, int) and value > 0:
                limits.append(value)
        model_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and 0 < model_max < 10**6:
            limits.append(model_max)
        return wrap_base(name, kind, model, tokenizer, min(limits))


def wrap_base(
    name: str, kind: ModelKind, model: nn.Module, tokenizer: Any, max_length: int
) -> SharedBase:
    """Route a loaded model's heads and Linears; the forward process wraps its copy the same
    way, so the two have the same modules and state-dict keys."""
    templates = route_heads(model) if kind == "sequence-classification" else {}
    layer_index = wrap_linears(model, skip=set(templates) | {"lm_head"})
    shared = SharedBase(name, kind, model, tokenizer, layer_index, templates, max_length)
    if kind == "sequence-classification":
        backbone = getattr(model, model.base_model_prefix)
        backbone.register_forward_hook(_keep_last_hidden(shared))
    return shared


def _keep_last_hidden(shared: SharedBase) -> Callable[..., None]:
    def hook(_module: nn.Module, _args: Any, output: Any) -> None:
        hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state
        shared.last_hidden.append(hidden)

    return hook
