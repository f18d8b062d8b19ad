"""Where and in what format compute runs: vocabularies the core shares with the service's
settings and job bodies, kept free of torch so that reading settings or checking a job stays
cheap."""

from __future__ import annotations

from typing import Literal, get_args

# Where the engine runs encoder forwards (adalora_core/serving/forward_process.py).
EncoderPlacement = Literal["auto", "process", "thread"]
ENCODER_PLACEMENTS: tuple[EncoderPlacement, ...] = get_args(EncoderPlacement)

# The floating-point format a training run computes in; "auto" applies adalora_core.precision's
# rule (fp32 on the CPU, bf16 on GPUs that compute it natively, fp16 with loss scaling on older).
Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)
