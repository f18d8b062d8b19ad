"""Which floating-point format training and serving compute in, on a given device.

One home for the rule both use: bf16 only where the hardware computes it natively (CUDA
compute capability 8.0 and later). ``torch.cuda.is_bf16_supported()`` also answers True on older
GPUs that emulate bf16 at a fraction of the speed, so it is not the test. Where bf16 is not
native, training falls back to fp16 autocast with loss scaling (a GradScaler), the classic
mixed-precision recipe; on the CPU it runs in fp32 so a resumed run stays bitwise exact.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from adalora_core.compute_choices import PRECISIONS

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
NATIVE_BF16_MAJOR = 8  # Ampere


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls run natively (not emulated)."""
    if device.type != "cuda":
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= NATIVE_BF16_MAJOR


def training_precision(requested: str, device: torch.device) -> str:
    """Resolve ``requested`` (one of PRECISIONS) to fp32, bf16 or fp16 on ``device``."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "fp32"
    return "bf16" if native_bf16(device) else "fp16"


class MixedPrecision:
    """The autocast context and loss scaling for one resolved precision.

    With fp16 the loss is scaled before backward and the gradients unscaled before anything
    reads them (clipping, the optimizer, AdaLoRA's importance scores); a step whose gradients
    overflowed is skipped by the scaler, and the allocator skips it too (non-finite check)."""

    def __init__(self, precision: str, device: torch.device) -> None:
        self.precision = precision
        self.device = device
        self.dtype = _DTYPES.get(precision)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true scale (no-op without a scaler)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
