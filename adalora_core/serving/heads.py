"""Per-row task heads on a shared sequence-classification base.

The base is loaded once as the family's *ForSequenceClassification model. Each of its head
modules (the top-level children with parameters other than the backbone: BERT `classifier`,
RoBERTa `classifier`, DistilBERT `pre_classifier` + `classifier`, GPT-2 `score`, ...; plus a
shallow `pooler` such as BERT's `bert.pooler`, which the trainer saves with the head) is replaced
by a `RoutedHead`. During a forward it applies, to each adapter group's rows, that adapter's own
copy of the module (template class + the adapter's head weights), or the base's own module for
rows without an adapter or adapters that do not override it; rows of different label counts are
zero-padded on the last dim, and the engine cuts each row back to its adapter's labels. Because
the routed module sits where the original head sat, family-specific pooling (BERT's first-token
pooler, GPT-2's last-token pick after the head) keeps working unchanged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from adalora_core.errors import ConfigError
from adalora_core.serving.grouped import _ROUTING


def head_module_names(model: nn.Module) -> list[str]:
    """Seq-cls head modules: top-level children with weights other than the backbone, plus a
    pooler at depth ≤ 1 (BERT's ``bert.pooler``), which the trainer trains and saves with the
    classifier (adalora_core.tasks.head_modules)."""
    backbone = getattr(model, "base_model_prefix", "")
    tops = [
        name
        for name, child in model.named_children()
        if name != backbone and any(True for _ in child.parameters())
    ]
    poolers = [
        path
        for path, module in model.named_modules()
        if path.split(".")[-1] == "pooler"
        and path.count(".") <= 1
        and any(True for _ in module.parameters())
    ]
    return tops + poolers


def strip_head_key(key: str) -> str:
    """PEFT head keys → plain module-relative keys (`classifier.weight`)."""
    for prefix in ("base_model.model.",):
        if key.startswith(prefix):
            key = key[len(prefix) :]
    return key.replace(".modules_to_save.default.", ".").replace(".original_module.", ".")


def build_heads(
    templates: dict[str, nn.Module], weights: dict[str, torch.Tensor], dtype: torch.dtype
) -> dict[str, nn.Module]:
    """Copy each template head module that the adapter has weights for and put its tensors in.

    Head modules the adapter does not override keep the base's own module (shared, not copied).
    Shapes may differ from the template (other label counts); Linear sizes are updated to match.
    """
    by_module: dict[str, dict[str, torch.Tensor]] = {}
    for raw_key, tensor in weights.items():
        key = strip_head_key(raw_key)
        owner = next((n for n in templates if key.startswith(n + ".")), None)
        if owner is None:
            raise ConfigError("head", f"head weight {raw_key!r} matches no head module of the base")
        by_module.setdefault(owner, {})[key[len(owner) + 1 :]] = tensor
    heads: dict[str, nn.Module] = {}
    for name, template in templates.items():
        own = by_module.get(name)
        if own is None:
            heads[name] = template
            continue
        module = copy.deepcopy(template)
        expected = {n for n, _ in module.named_parameters()}
        if set(own) != expected:
            raise ConfigError(
                "head", f"head {name!r} needs {sorted(expected)}, the adapter has {sorted(own)}"
            )
        for param_name, tensor in own.items():
            owner_path, _, leaf = param_name.rpartition(".")
            owner_module = module.get_submodule(owner_path) if owner_path else module
            setattr(owner_module, leaf, nn.Parameter(tensor.to(dtype), requires_grad=False))
            if isinstance(owner_module, nn.Linear) and leaf == "weight":
                owner_module.out_features, owner_module.in_features = tensor.shape
        heads[name] = module.eval()
    return heads


class RoutedHead(nn.Module):
    """Stands where a head module stood; runs each row group through its adapter's copy."""

    def __init__(self, name: str, template: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.template = template

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing = _ROUTING.get()
        if routing is None:
            return self.template(x)
        pieces = [
            (self.template if g.heads is None else g.heads[self.name])(x[g.start : g.stop])
            for g in routing.groups
        ]
        width = max(p.shape[-1] for p in pieces)
        return torch.cat([F.pad(p, (0, width - p.shape[-1])) for p in pieces], dim=0)


def route_heads(model: nn.Module) -> dict[str, nn.Module]:
    """Replace the model's head modules by routed ones; return the original modules as templates."""
    templates: dict[str, nn.Module] = {}
    for name in head_module_names(model):
        template = model.get_submodule(name)
        templates[name] = template
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, RoutedHead(name, template))
    return templates
