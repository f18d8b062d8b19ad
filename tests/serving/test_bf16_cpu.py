"""A bfloat16 serving engine on the CPU (ADALORA_INFER_DTYPE=bfloat16 with no GPU) against
float32, on the tiny models: what holds, and within which bound.

bf16 keeps 8 significant bits, so each rounding is off by up to 2^-8 (0.4%) of the value, and
the errors add up through the layers: run in bf16, these tiny models' logits (which span about
±0.4) moved by up to 0.021 on random prompts (HF's own forward, bf16 against fp32).
- Classification: every probability within PROB_BOUND (3e-2; up to 0.018 seen) of the float32
  engine's, and the same label wherever float32's best two probabilities are further apart
  than twice that.
- Greedy generation: every token is the argmax of float32 (HF on the adapter merged into its
  own copy of the base) until the first step where float32's best two logits lie within
  LOGIT_TIE (0.05, a little over twice the largest move above); there bf16 may take the other
  one of the near-tie, and nowhere else. Such near-ties are common in tiny random models, yet
  at least three rows in four agree at every step (15 and 14 of 16 here).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from adalora_core.formats.bundle import AdapterWeights
from adalora_core.serving.engine import InferenceEngine
from adalora_core.serving.generation import GenerationParams
from adalora_core.serving.handles import FINISH_STOP, Generation
from application.engine_factory import serving_dtype
from tests.serving.test_decoding import add_adapters
from tests.serving.test_mixed_batch import three_adapters
from tests.serving.tiny_serving import WORDS, MemorySource, make_tokenizer, merged_reference

PROB_BOUND = 3e-2
LOGIT_TIE = 5e-2
EOS = 4
NEW_TOKENS = 10
KIND = "causal-lm"

CPU_BF16 = serving_dtype("bfloat16", torch.device("cpu"))


def texts(count: int, longest: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(1, longest))) for _ in range(count)]


def test_the_factory_serves_bfloat16_on_the_cpu() -> None:
    assert CPU_BF16 is torch.bfloat16


@pytest.mark.parametrize("placement", ["process", "thread"])
def test_bf16_classification_is_within_the_bound_of_float32(
    make_engine, source: MemorySource, tmp_path: Path, placement: str
) -> None:
    adapters = {k: w for k, w in three_adapters().items() if w.meta.task["kind"] != "regression"}
    for adapter_id, weights in adapters.items():
        source.add(adapter_id, weights, tmp_path)
    inputs = texts(24, 20, seed=0)
    full = make_engine(encoder_forward=placement)
    half = make_engine(encoder_forward=placement, dtype=CPU_BF16)
    for adapter_id in adapters:
        exact = full.infer(adapter_id, inputs, base_model="tiny-bert")
        rounded = half.infer(adapter_id, inputs, base_model="tiny-bert")
        for want, got in zip(exact, rounded, strict=True):
            for label, p in want["scores"].items():
                assert abs(got["scores"][label] - p) <= PROB_BOUND, (adapter_id, want, got)
            best, second = sorted(want["scores"].values(), reverse=True)[:2]
            if best - second > 2 * PROB_BOUND:
                assert got["label"] == want["label"], (adapter_id, want, got)
    weights = half.base("tiny-bert", "sequence-classification").model.parameters()
    assert {p.dtype for p in weights} == {torch.bfloat16}  # it really ran in bf16


HIDDEN = (0, 1)  # [PAD] and [UNK]: tokens the decoded text leaves out


def steps_of(handle: Generation, tokenizer: Any) -> list[int | None]:
    """A row's token at each step, read from its published events (one per visible word, with
    the running token count): a word's id, None for a token the text does not show (one of
    HIDDEN), and EOS when the row ended on end-of-sequence."""
    steps: list[int | None] = []
    while True:
        event = handle.next_event(timeout=60)
        words = event.delta.split()
        steps += [None] * (event.tokens - len(steps) - len(words))
        steps += tokenizer.convert_tokens_to_ids(words)
        if event.finish is not None:
            return steps + ([EOS] if event.finish == FINISH_STOP else [])


def divergence(
    model: nn.Module, prompt: list[int], steps: list[int | None]
) -> tuple[int, list[int], torch.Tensor]:
    """Walk a bf16 row with the float32 reference: the first step whose token is not the
    reference's argmax, the tokens the row may have taken there, and the reference's logits
    there; step -1 when every token is the argmax."""
    ids = list(prompt)
    logits = torch.empty(0)
    with torch.no_grad():
        for step, token in enumerate(steps):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
            best = int(logits.argmax())
            taken = list(HIDDEN) if token is None else [token]
            if best not in taken:
                return step, taken, logits
            ids.append(best)
    return -1, [], logits


@dataclass(frozen=True)
class RowWalk:
    where: tuple[Any, ...]  # adapter, prompt, the row's steps
    step: int  # the first step off float32's argmax; -1 when there is none
    clear: bool  # that step was no near-tie: float32's choice was clear


def walk_rows(
    engine: InferenceEngine, adapter_id: str, base: str, adapter: AdapterWeights, prompts: list[str]
) -> list[RowWalk]:
    """Generate greedily for every prompt at once and walk each row with the float32 reference
    (also bench/gpu_checks.py's, for the engine on a GPU)."""
    tokenizer = make_tokenizer(with_cls=False)
    reference = merged_reference(adapter)
    params = GenerationParams(NEW_TOKENS)
    prepared = engine.prepare(adapter_id, prompts, params, base_model=base, base_kind=KIND)
    walks = []
    for prompt, handle in zip(prompts, engine.generate(prepared), strict=True):
        steps = steps_of(handle, tokenizer)
        step, taken, logits = divergence(reference, tokenizer(prompt)["input_ids"], steps)
        clear = False
        if step >= 0:
            best, second = logits.topk(2).values.tolist()
            near = best - max(float(logits[t]) for t in taken)
            clear = best - second > LOGIT_TIE or near > LOGIT_TIE
        walks.append(RowWalk((adapter_id, prompt, steps), step, clear))
    return walks


@pytest.mark.parametrize("base", ["tiny-gpt2", "tiny-llama"])
def test_bf16_greedy_tokens_leave_float32_only_at_near_ties(
    make_engine, source: MemorySource, tmp_path: Path, base: str
) -> None:
    weights = add_adapters(source, tmp_path, base)
    engine = make_engine(dtype=CPU_BF16)
    prompts = texts(8, 6, seed=1)
    walks = [
        walk
        for adapter_id, adapter in weights.items()
        for walk in walk_rows(engine, adapter_id, base, adapter, prompts)
    ]
    clear = [(walk.where, walk.step) for walk in walks if walk.clear]
    assert not clear, f"bf16 left float32 at a clear choice: {clear}"
    agreeing = sum(walk.step < 0 for walk in walks)
    assert 4 * agreeing >= 3 * len(walks), f"only {agreeing} of {len(walks)} rows agree throughout"
    layers = engine.base(base, KIND).model.parameters()
    assert {p.dtype for p in layers} == {torch.bfloat16}
