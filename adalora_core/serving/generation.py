"""Generation settings for every generative path, and seq2seq generation of a routed batch.

Causal-LM rows decode in the continuous decoder (decoding.py). Seq2seq rows run through HF
``generate()``, which keeps every row at its position for greedy search and sampling (only beam
search reorders rows), so with the routing context set around it each row keeps its adapter for
every decoding step. Rows of one such batch share temperature/top_p (the batcher groups by them);
``max_new_tokens`` may differ per row: the batch runs to the largest and each row is cut to its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from adalora_core.serving.constraints import CompiledGrammar

# OpenAI's bounds: a logit bias is at most 100 either way; at most 20 alternatives per token.
MAX_LOGIT_BIAS = 100.0
MAX_TOP_LOGPROBS = 20


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None  # a sampled row's own random stream (causal-LM decoding)
    stop: tuple[str, ...] = ()  # text that ends a row, left out of its answer (causal-LM)
    # The rest is causal-LM decoding only (decoding.py, sampling.py), per row in the batch.
    grammar: CompiledGrammar | None = None  # the output must be a document of this grammar
    presence_penalty: float = 0.0  # subtracted from a token's logit once it was generated
    frequency_penalty: float = 0.0  # subtracted once per time it was generated
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    logprobs: int | None = None  # report the picked token's logprob and this many alternatives
    prompt_logprobs: bool = False  # and each prompt token's, from the prefill (``logprobs`` top)

    @property
    def adjusts_logits(self) -> bool:
        """Whether a row's logits change before its pick (penalties, biases, a grammar)."""
        return bool(
            self.grammar or self.presence_penalty or self.frequency_penalty or self.logit_bias
        )

    @property
    def sampling_key(self) -> tuple[float, float]:
        """What must be equal for rows to share one generate() call."""
        return (self.temperature, self.top_p)


def generate_rows(
    model: nn.Module,
    tokenizer: Any,
    batch: Mapping[str, torch.Tensor],
    max_new_tokens: Sequence[int],
    sampling: tuple[float, float],
) -> list[str]:
    """Generate for padded, sorted seq2seq rows (the caller set the routing); decode each row's
    new text (the decoder's start token left out)."""
    temperature, top_p = sampling
    options: dict[str, Any] = {
        "max_new_tokens": max(max_new_tokens),
        "num_beams": 1,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if temperature > 0:
        options.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    output = model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **options
    )
    new_tokens = output[:, 1:]
    return [
        tokenizer.decode(row[:limit], skip_special_tokens=True)
        for row, limit in zip(new_tokens.tolist(), max_new_tokens, strict=True)
    ]
