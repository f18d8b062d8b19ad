"""Adapter layers: AdaLoRA's SVD-form update and a plain LoRA baseline.

Both add their low-rank term into the frozen base layer's 2-D output in place (one addmm_), so
no output-sized temporaries are created and backward copies no output-sized gradient. Both can
share one dropout draw among the modules that read the same input tensor (query/key/value), see
`DropoutCache`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

ADAPTABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, Conv1D)


class DropoutCache:
    """Per-forward memo of dropped-out inputs, keyed on the input tensor's identity.

    PEFT draws a fresh dropout copy in every adapted module; q/k/v read the same hidden state,
    so sharing one draw saves two input-sized copies per attention block. The owner must call
    `clear()` around every forward (the AdaLoraModel does), which also keeps ids from being reused.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[int, float], tuple[Tensor, Tensor]] = {}

    def dropout(self, x: Tensor, p: float) -> Tensor:
        key = (id(x), p)
        hit = self._entries.get(key)
        if hit is not None and hit[0] is x:
            return hit[1]
        dropped = F.dropout(x, p, training=True)
        self._entries[key] = (x, dropped)
        return dropped

    def clear(self) -> None:
        self._entries.clear()


def base_features(base_layer: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an nn.Linear or a GPT-2 Conv1D (weight stored in×out)."""
    if isinstance(base_layer, Conv1D):
        in_features, out_features = base_layer.weight.shape
        return int(in_features), int(out_features)
    if isinstance(base_layer, nn.Linear):
        return base_layer.in_features, base_layer.out_features
    raise TypeError(f"only nn.Linear and Conv1D can be adapted, got {type(base_layer).__name__}")


def _adapter_dtype(base_layer: nn.Module) -> torch.dtype:
    # Train adapters in fp32 even on a half-precision base: the importance EMAs need the range.
    dtype = base_layer.weight.dtype
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _add_low_rank_(result: Tensor, hidden: Tensor, up: Tensor, alpha: float = 1.0) -> Tensor:
    """result += alpha · hidden @ upᵀ for 2-D tensors, in place (one fused GEMM)."""
    if hidden.dtype != result.dtype:
        hidden = hidden.to(result.dtype)
        up = up.to(result.dtype)
    return result.addmm_(hidden, up.t(), alpha=alpha)


class _AdapterLayer(nn.Module):
    """What both adapter kinds share: the frozen base layer, dropout and the shared-dropout hook."""

    def __init__(self, base_layer: nn.Module, lora_dropout: float) -> None:
        super().__init__()
        self.in_features, self.out_features = base_features(base_layer)
        self.base_layer = base_layer
        self.fan_in_fan_out = isinstance(base_layer, Conv1D)
        self.lora_dropout = float(lora_dropout)
        self.dropout_cache: DropoutCache | None = None
        self.adapter_enabled = True
        for param in base_layer.parameters():
            param.requires_grad_(False)

    @property
    def weight(self) -> Tensor:
        """The frozen base weight: model code such as T5's FFN reads `.weight.dtype`."""
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    def _base_2d(self, x2d: Tensor) -> Tensor:
        """The base layer's output for a 2-D input, as a fresh (non-view) tensor.

        Writing the adapter term into a view of a 3-D output makes autograd copy the whole
        output gradient in backward (CopySlices); a 2-D base output avoids that. Plain Linear and
        Conv1D layers without hooks are computed here directly; anything else goes through the
        module itself."""
        base = self.base_layer
        plain = not (base._forward_hooks or base._forward_pre_hooks)
        if type(base) is nn.Linear and plain:
            return F.linear(x2d, base.weight, base.bias)
        if type(base) is Conv1D and plain:
            if base.bias is None:
                return x2d @ base.weight
            return torch.addmm(base.bias, x2d, base.weight)
        return base(x2d).clone()

    def _adapter_input(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        if self.training and self.lora_dropout > 0.0:
            if self.dropout_cache is not None:
                x = self.dropout_cache.dropout(x, self.lora_dropout)
            else:
                x = F.dropout(x, self.lora_dropout, training=True)
        return x if x.dtype == dtype else x.to(dtype)


class SVDLinear(_AdapterLayer):
    """y = W0·x + s·P·diag(λ)·Q·x with P = `lora_B` (out×r), λ = `lora_E` (r×1), Q = `lora_A`
    (r×in); s = lora_alpha / init_r stays constant while ranks are masked. `rank` may be below
    init_r (a pruned adapter) or 0 (the layer then returns the base output)."""

    def __init__(
        self,
        base_layer: nn.Module,
        *,
        rank: int,
        init_r: int,
        lora_alpha: float,
        lora_dropout: float = 0.0,
        pq_init: str = "normal",
    ) -> None:
        super().__init__(base_layer, lora_dropout)
        if not 0 <= rank <= init_r:
            raise ValueError(f"rank must be in [0, init_r={init_r}], got {rank}")
        self.init_r = init_r
        self.lora_alpha = float(lora_alpha)
        self.scaling = self.lora_alpha / init_r
        factory = {"device": base_layer.weight.device, "dtype": _adapter_dtype(base_layer)}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **factory))
        self.lora_E = nn.Parameter(torch.empty(rank, 1, **factory))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, rank, **factory))
        self.reset_adapter(pq_init)

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    @torch.no_grad()
    def reset_adapter(self, pq_init: str = "normal") -> None:
        """λ = 0 keeps the model unchanged at step 0. P, Q ~ N(0, 0.02) as in the paper, or
        with orthonormal columns of P and rows of Q (``pq_init="orthonormal"``)."""
        nn.init.zeros_(self.lora_E)
        if self.rank == 0:
            return
        if pq_init == "orthonormal":
            nn.init.orthogonal_(self.lora_A)
            nn.init.orthogonal_(self.lora_B)
        else:
            nn.init.normal_(self.lora_A, mean=0.0, std=0.02)
            nn.init.normal_(self.lora_B, mean=0.0, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        if self.rank == 0 or not self.adapter_enabled:
            return self.base_layer(x)
        x2d = x.reshape(-1, self.in_features)
        adapter_in = self._adapter_input(x, self.lora_A.dtype).reshape(-1, self.in_features)
        hidden = F.linear(adapter_in, self.lora_A)
        hidden = hidden * (self.lora_E.view(-1) * self.scaling)
        result = _add_low_rank_(self._base_2d(x2d), hidden, self.lora_B)
        return result.view(*x.shape[:-1], self.out_features)

    def delta_weight(self) -> Tensor:
        """ΔW in the base layer's weight layout (out×in, or in×out for Conv1D)."""
        delta = (self.lora_B @ (self.lora_A * self.lora_E)) * self.scaling
        return delta.t() if self.fan_in_fan_out else delta

    def extra_repr(self) -> str:
        return f"rank={self.rank}, init_r={self.init_r}, scaling={self.scaling:.4g}"


class LoRALinear(_AdapterLayer):
    """Plain LoRA (y = W0·x + (alpha/r)·B·A·x, B = 0 at init): the speed and GLUE baseline."""

    def __init__(
        self, base_layer: nn.Module, *, r: int, lora_alpha: float, lora_dropout: float = 0.0
    ) -> None:
        super().__init__(base_layer, lora_dropout)
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        self.r = r
        self.lora_alpha = float(lora_alpha)
        self.scaling = self.lora_alpha / r
        factory = {"device": base_layer.weight.device, "dtype": _adapter_dtype(base_layer)}
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **factory))
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def rank(self) -> int:
        return self.r

    def forward(self, x: Tensor) -> Tensor:
        if not self.adapter_enabled:
            return self.base_layer(x)
        x2d = x.reshape(-1, self.in_features)
        adapter_in = self._adapter_input(x, self.lora_A.dtype).reshape(-1, self.in_features)
        hidden = F.linear(adapter_in, self.lora_A)
        result = _add_low_rank_(self._base_2d(x2d), hidden, self.lora_B, alpha=self.scaling)
        return result.view(*x.shape[:-1], self.out_features)

    def delta_weight(self) -> Tensor:
        delta = (self.lora_B @ self.lora_A) * self.scaling
        return delta.t() if self.fan_in_fan_out else delta

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:.4g}"
