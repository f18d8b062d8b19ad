"""How a sampled row picks its next token: its own seeded generator, temperature, then nucleus
(top-p), on the CPU, so a seeded row draws the same tokens whatever else is in the batch."""

from __future__ import annotations

import torch

from adalora_core.serving.generation import GenerationParams


def row_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def sample_token(
    logits: torch.Tensor, sampling: GenerationParams, generator: torch.Generator | None
) -> int:
    """Temperature, then nucleus (top-p) sampling, on the CPU with the row's own generator so a
    seeded row draws the same tokens whatever else is in the batch."""
    probs = torch.softmax(logits.cpu() / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        cumulative = sorted_probs.cumsum(-1)
        drop = cumulative - sorted_probs > sampling.top_p  # keep the smallest set reaching top_p
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
