"""Per-row generation controls in the continuous decoder: a JSON grammar, log-probabilities,
presence and frequency penalties and logit biases, each applied to its own row only, so rows
with and without them decode together as each decodes alone.

The base is a tiny random Llama over SmolLM2's real byte-level vocabulary (grammars need it).
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from adalora_core.serving.engine import EngineSettings, InferenceEngine
from adalora_core.serving.generation import GenerationParams
from adalora_core.serving.handles import Completion, Generation
from tests.serving.test_constraints import ORDER, WEATHER_ARGUMENTS
from tests.serving.tiny_serving import MemorySource, byte_level_llama, llama_adapter_for

BASE = "byte-llama"
PROMPTS = ["Give me an order.", "What is the weather?", "Hello there", "List three fruits"]


@pytest.fixture(scope="module")
def model(smollm2_tokenizer: Any) -> torch.nn.Module:
    return byte_level_llama(smollm2_tokenizer)


@pytest.fixture
def engine(
    model: torch.nn.Module, smollm2_tokenizer: Any, tmp_path: Path
) -> Iterator[InferenceEngine]:
    source = MemorySource()
    for seed in (1, 2):
        source.add(f"a{seed}", llama_adapter_for(model, BASE, seed), tmp_path)

    def factory(name: str, kind: str) -> tuple[torch.nn.Module, Any]:
        return copy.deepcopy(model), copy.deepcopy(smollm2_tokenizer)

    built = InferenceEngine(source, EngineSettings(max_length=512), base_factory=factory)
    yield built
    built.close()


def start(
    engine: InferenceEngine, adapter: str | None, prompt: str, params: GenerationParams
) -> Generation:
    base = engine.base(BASE, "causal-lm")
    with base.tokenizer_lock:
        ids = base.tokenizer(prompt)["input_ids"]
    prepared = engine.prepare_tokens(adapter, [ids], params, base_model=BASE)
    return engine.generate(prepared)[0]


def run(engine: InferenceEngine, rows: list[tuple[str | None, str, GenerationParams]]):
    """All rows submitted at once (one batch), waited for."""
    handles = [start(engine, *row) for row in rows]
    return [h.wait(timeout=300) for h in handles]


def schema_params(engine: InferenceEngine, schema: dict, **more: Any) -> GenerationParams:
    grammar = engine.base(BASE, "causal-lm").grammars.json_schema(schema)
    return GenerationParams(200, grammar=grammar, **more)


def test_constrained_and_free_rows_on_different_adapters_each_decode_as_alone(
    engine: InferenceEngine,
) -> None:
    rows = [
        ("a1", PROMPTS[0], schema_params(engine, ORDER)),
        ("a2", PROMPTS[1], schema_params(engine, WEATHER_ARGUMENTS)),
        (None, PROMPTS[2], schema_params(engine, ORDER)),
        ("a1", PROMPTS[3], GenerationParams(24)),
        (None, PROMPTS[0], GenerationParams(24)),
    ]
    together = run(engine, rows)
    alone = [run(engine, [row])[0] for row in rows]
    assert [c.text for c in together] == [c.text for c in alone]
    for (_, _, params), done in zip(rows[:3], together, strict=False):
        schema = ORDER if params.grammar is rows[0][2].grammar else WEATHER_ARGUMENTS
        jsonschema.validate(json.loads(done.text), schema)
        assert done.finish == "stop"
    free = together[3].text
    with pytest.raises(json.JSONDecodeError):
        json.loads(free)  # the free rows really are free (the grammar did not leak)


def test_json_object_mode_gives_an_object(engine: InferenceEngine) -> None:
    grammar = engine.base(BASE, "causal-lm").grammars.json_object()
    (done,) = run(engine, [("a2", PROMPTS[2], GenerationParams(300, grammar=grammar))])
    if done.finish == "stop":  # a random model may fill a string until its token budget
        assert isinstance(json.loads(done.text), dict)
    assert done.text.startswith("{")


def reference_logprobs(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)


def test_logprobs_are_the_models_log_softmax_before_the_rows_controls(
    engine: InferenceEngine, model: torch.nn.Module, smollm2_tokenizer: Any
) -> None:
    """On the plain base the reported values equal a log-softmax of the model's own logits
    on the same prefix, also under a grammar and a penalty (reported before them)."""
    ids = smollm2_tokenizer(PROMPTS[3])["input_ids"]
    params = [
        GenerationParams(6, logprobs=5),
        schema_params(engine, WEATHER_ARGUMENTS, logprobs=3, frequency_penalty=1.5),
    ]
    for done in run(engine, [(None, PROMPTS[3], p) for p in params]):
        assert len(done.logprobs) == done.completion_tokens
        prefix = list(ids)
        for entry in done.logprobs:
            expected = reference_logprobs(model, prefix)
            assert abs(entry.logprob - float(expected[entry.token_id])) < 1e-4
            top_values, top_ids = expected.topk(len(entry.top))
            assert [t for t, _ in entry.top] == top_ids.tolist()
            assert torch.allclose(torch.tensor([v for _, v in entry.top]), top_values, atol=1e-4)
            prefix.append(entry.token_id)


def test_logprobs_of_a_row_do_not_depend_on_its_batch(engine: InferenceEngine) -> None:
    params = GenerationParams(8, logprobs=2)
    together = run(engine, [("a1", PROMPTS[0], params), ("a2", PROMPTS[1], GenerationParams(8))])
    (alone,) = run(engine, [("a1", PROMPTS[0], params)])
    assert [e.token_id for e in together[0].logprobs] == [e.token_id for e in alone.logprobs]
    for a, b in zip(together[0].logprobs, alone.logprobs, strict=True):
        assert abs(a.logprob - b.logprob) < 1e-4


def repeats(done: Completion) -> int:
    counts = Counter(e.token_id for e in done.logprobs)
    return sum(n - 1 for n in counts.values())


def test_penalties_and_biases_change_the_picks_as_defined(engine: InferenceEngine) -> None:
    plain = GenerationParams(24, logprobs=0)
    (free,) = run(engine, [("a1", PROMPTS[2], plain)])
    assert repeats(free) > 0, "the unpenalized greedy text must repeat a token to test this"
    # A frequency or presence penalty far above any logit gap: no token is picked twice.
    for field in ("frequency_penalty", "presence_penalty"):
        (penalized,) = run(
            engine, [("a1", PROMPTS[2], GenerationParams(24, logprobs=0, **{field: 50.0}))]
        )
        assert repeats(penalized) == 0, field
    # A negative frequency penalty favours what was said: the first token repeats.
    (echoing,) = run(
        engine, [("a1", PROMPTS[2], GenerationParams(8, logprobs=0, frequency_penalty=-50.0))]
    )
    first = echoing.logprobs[0].token_id
    assert all(e.token_id == first for e in echoing.logprobs)
    # +100 on one token makes it every pick; -100 on the greedy first pick moves it away.
    target = free.logprobs[-1].token_id
    (forced,) = run(
        engine, [("a1", PROMPTS[2], GenerationParams(5, logprobs=0, logit_bias=((target, 100.0),)))]
    )
    assert [e.token_id for e in forced.logprobs] == [target] * 5
    banned = free.logprobs[0].token_id
    (moved,) = run(
        engine,
        [("a1", PROMPTS[2], GenerationParams(5, logprobs=0, logit_bias=((banned, -100.0),)))],
    )
    assert banned not in [e.token_id for e in moved.logprobs]
    # The values reported stay the adapter's own: before the bias, the most likely first
    # token is still the free run's first pick.
    (reported,) = run(
        engine, [("a1", PROMPTS[2], GenerationParams(1, logprobs=1, logit_bias=((target, 100.0),)))]
    )
    assert reported.logprobs[0].top[0][0] == free.logprobs[0].token_id
