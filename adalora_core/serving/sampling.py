"""How a decode row picks its next token, alone whatever else is in the batch.

Per row, in this order: its logits are read for the log-probabilities it reports (the adapter's
own distribution, before anything below, as vLLM reports them by default), then presence and
frequency penalties and the logit bias change them, its grammar (if any) forbids what the
document cannot continue with, and the token is picked: greedy, or sampled with temperature and
nucleus (top-p) on the CPU from the row's own seeded generator, so a seeded row draws the same
tokens whatever runs beside it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from adalora_core.serving.constraints import RowConstraint
from adalora_core.serving.generation import GenerationParams


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the most likely tokens at its place."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


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


def token_logprob(logprobs: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """The entry of ``token`` from one row's log-softmax, with its ``top`` alternatives."""
    alternatives: tuple[tuple[int, float], ...] = ()
    if top:
        values, ids = logprobs.topk(top)
        alternatives = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprob(token, float(logprobs[token]), alternatives)


class RowSampler:
    """One row's sampling state: its generator, its place in its grammar, the counts its
    penalties read. Used by the decode thread only."""

    def __init__(self, params: GenerationParams) -> None:
        self.params = params
        self.generator = row_generator(params.seed)
        self.constraint: RowConstraint | None = (
            None if params.grammar is None else params.grammar.start()
        )
        self._counts: Counter[int] = Counter()
        self._bias: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def adjusts(self) -> bool:
        return self.params.adjusts_logits

    def adjust(self, logits: torch.Tensor) -> None:
        """Penalties, bias, then the grammar's mask, in place on one row's fp32 logits."""
        params = self.params
        if self._counts and (params.presence_penalty or params.frequency_penalty):
            ids = torch.tensor(list(self._counts), device=logits.device)
            counts = torch.tensor(list(self._counts.values()), device=logits.device).float()
            logits[ids] -= counts * params.frequency_penalty + params.presence_penalty
        if params.logit_bias:
            if self._bias is None:
                ids, values = zip(*params.logit_bias, strict=True)
                self._bias = (
                    torch.tensor(ids, device=logits.device),
                    torch.tensor(values, device=logits.device, dtype=logits.dtype),
                )
            logits.index_add_(0, *self._bias)
        if self.constraint is not None:
            self.constraint.mask(logits)

    def pick(self, logits: torch.Tensor) -> int:
        """A sampled row's token from its adjusted logits (greedy rows are picked together)."""
        return sample_token(logits, self.params, self.generator)

    def accept(self, token: int, end: bool) -> None:
        """Record the picked token (``end``: an end-of-sequence token, never counted)."""
        if self.constraint is not None:
            self.constraint.accept(token)
        if not end:
            self._counts[token] += 1

    @property
    def document_closed(self) -> bool:
        """The row's grammar allows nothing but its end: the row may stop now."""
        return self.constraint is not None and self.constraint.is_finished
