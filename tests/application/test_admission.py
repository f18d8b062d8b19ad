"""The one admission step: every protocol's refusals come from here, each naming its field."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from adalora_core.errors import ConfigError
from adalora_core.serving.engine import EngineSettings, InferenceEngine
from adalora_core.serving.sources import AdapterRef
from application.adapter_directory import AdapterRecord, corrupt
from application.admission import (
    Admission,
    AdmissionLimits,
    Chat,
    InferCall,
    Prompts,
    Sampling,
    TextRows,
)
from application.errors import RequestError, not_found
from tests.serving.test_decoding import LLAMA_RANKS
from tests.serving.test_mixed_batch import three_adapters
from tests.serving.tiny_serving import MemorySource, base_factory, make_adapter

TENANT = "t1"
BASES = {"tiny-bert": "tiny-bert", "tiny-llama": "tiny-llama"}


@dataclass
class MemoryDirectory:
    """The admission step's view of a tenant's adapter records, held in memory."""

    records: dict[tuple[str, str], AdapterRecord] = field(default_factory=dict)
    condemned: list[str] = field(default_factory=list)

    def add(self, tenant_id: str, adapter_id: str, base: str, task: str) -> None:
        ref = AdapterRef(adapter_id, base_model=base)
        self.records[(tenant_id, adapter_id)] = AdapterRecord(ref, task)

    def find(self, tenant_id: str, adapter_id: str) -> AdapterRecord:
        found = self.records.get((tenant_id, adapter_id))
        if found is None:
            raise not_found("adapter", adapter_id)
        return found

    def find_cached(self, tenant_id: str, adapter_id: str) -> AdapterRecord | None:
        return self.records.get((tenant_id, adapter_id))

    def condemn(self, tenant_id: str, adapter_id: str, reason: str) -> RequestError:
        self.condemned.append(adapter_id)
        return corrupt(adapter_id, reason)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def admission_for(tmp_path: Path) -> Callable[..., tuple[Admission, MemorySource, MemoryDirectory]]:
    engines: list[InferenceEngine] = []

    def build(
        max_rows: int = 256,
        max_new_tokens: int = 64,
        max_batch_tokens: int = 16384,
        **engine_settings: Any,
    ) -> tuple[Admission, MemorySource, MemoryDirectory]:
        source, directory = MemorySource(), MemoryDirectory()
        for adapter_id, weights in three_adapters().items():
            source.add(adapter_id, weights, tmp_path)
            task = weights.meta.task["kind"]
            directory.add(TENANT, adapter_id, "tiny-bert", task)
        for adapter_id, ranks in LLAMA_RANKS.items():
            source.add(adapter_id, make_adapter("tiny-llama", "causal-lm", ranks, seed=7), tmp_path)
            directory.add(TENANT, adapter_id, "tiny-llama", "causal-lm")
        settings = EngineSettings(max_batch_tokens=max_batch_tokens, **engine_settings)
        engine = InferenceEngine(source, settings, base_factory=base_factory)
        engines.append(engine)
        limits = AdmissionLimits(max_rows, max_new_tokens, max_batch_tokens)
        return Admission(engine, directory, BASES, limits), source, directory  # type: ignore[arg-type]

    yield build
    for engine in engines:
        engine.close()


def refusal(call: Callable[[], object]) -> ConfigError | RequestError:
    with pytest.raises((ConfigError, RequestError)) as info:
        call()
    return info.value


def field_of(error: ConfigError | RequestError) -> str | None:
    return error.field


def test_infer_refusals_name_their_field(admission_for) -> None:
    admission, _, _ = admission_for(max_rows=3, max_length=8)

    def infer(*args: object) -> object:
        return admission.infer(InferCall(*args))  # type: ignore[arg-type]

    too_many = refusal(lambda: infer(TENANT, "a-qv", None, TextRows(["w1"] * 4), {}))
    assert field_of(too_many) == "inputs"
    long_row = TextRows(["w1", " ".join(["w2"] * 20)], truncate=False)
    assert field_of(refusal(lambda: infer(TENANT, "a-qv", None, long_row, {}))) == "inputs[1]"
    cut = infer(TENANT, "a-qv", None, TextRows(["w1", " ".join(["w2"] * 20)]), {})
    assert cut.prepared.longest == 8
    triple = TextRows([["w1", "w2", "w3"]])
    assert field_of(refusal(lambda: infer(TENANT, "a-qv", None, triple, {}))) == "inputs[0]"
    both = refusal(lambda: infer(TENANT, "a-qv", "tiny-bert", TextRows(["w1"]), {}))
    assert field_of(both) == "base_model"
    unknown = refusal(lambda: infer(TENANT, None, "gpt-17", TextRows(["w1"]), {}))
    assert field_of(unknown) == "base_model"
    other_tenant = refusal(lambda: infer("t2", "a-qv", None, TextRows(["w1"]), {}))
    assert isinstance(other_tenant, RequestError) and other_tenant.status == 404


def test_generation_parameters_are_checked_even_where_unused(admission_for) -> None:
    admission, _, _ = admission_for(max_new_tokens=16)
    rows = TextRows(["w1"])
    for adapter_id in ("a1", "a-qv"):  # a generating adapter and a classifier
        huge = refusal(
            lambda a=adapter_id: admission.infer(
                InferCall(TENANT, a, None, rows, {"max_new_tokens": 10_000})
            )
        )
        assert field_of(huge) == "parameters.max_new_tokens"
        flat = refusal(
            lambda a=adapter_id: admission.infer(InferCall(TENANT, a, None, rows, {"top_p": 0}))
        )
        assert field_of(flat) == "parameters.top_p"
    sampled = admission.infer(
        InferCall(TENANT, "a1", None, rows, {"temperature": 0.7, "top_p": 0.9})
    )
    generation = sampled.prepared.generation
    assert generation is not None and generation.max_new_tokens == 16  # the default, capped
    assert (generation.temperature, generation.top_p) == (0.7, 0.9)


def test_one_row_too_large_for_a_batch_is_refused(admission_for) -> None:
    admission, _, _ = admission_for(max_batch_tokens=40)
    huge = TextRows([" ".join(["w3"] * 50)])
    assert (
        field_of(refusal(lambda: admission.infer(InferCall(TENANT, "a-qv", None, huge, {}))))
        == "inputs"
    )
    admission, _, _ = admission_for(max_batch_tokens=30)
    prompt = TextRows(["w1 w2 w3"])
    needs_cache = refusal(
        lambda: admission.infer(InferCall(TENANT, "a1", None, prompt, {"max_new_tokens": 28}))
    )
    assert field_of(needs_cache) == "inputs"


def test_the_generation_protocols_refuse_in_openais_vocabulary(admission_for) -> None:
    admission, _, _ = admission_for(max_new_tokens=16)
    generate = admission.generation
    greedy = Sampling(max_new_tokens=4, temperature=0.0)
    encoder = refusal(lambda: generate(TENANT, "a-qv", Prompts(["w1"], True), greedy))
    assert field_of(encoder) == "model" and "does not generate text" in str(encoder)
    base_encoder = refusal(lambda: generate(TENANT, "tiny-bert", Prompts(["w1"], True), greedy))
    assert field_of(base_encoder) == "model"
    missing = refusal(lambda: generate(TENANT, "nope", Prompts(["w1"], True), greedy))
    assert isinstance(missing, RequestError) and missing.code == "model_not_found"
    capped = refusal(lambda: generate(TENANT, "a1", Prompts(["w1"], True), Sampling(17)))
    assert field_of(capped) == "max_tokens"
    ids = Prompts([[5, 6], [5, 999]])
    assert field_of(refusal(lambda: generate(TENANT, "a1", ids, greedy))) == "prompt.1.1"
    stops = Sampling(4, stop=["a", "b", "c", "d", "e"])
    assert field_of(refusal(lambda: generate(TENANT, "a1", Prompts(["w1"], True), stops))) == "stop"
    long_prompt = Prompts([" ".join(["w2"] * 70)], True)
    assert field_of(refusal(lambda: generate(TENANT, "a1", long_prompt, greedy))) == "prompt"


def test_chat_fills_the_context_when_max_tokens_is_unset(admission_for) -> None:
    admission, _, _ = admission_for(max_new_tokens=200)
    from tests.serving import tiny_serving

    tokenizer = tiny_serving.make_tokenizer(with_cls=False)
    assert not getattr(tokenizer, "chat_template", None)  # the tiny model has no chat template
    chat = Chat([{"role": "user", "content": "w1 w2"}])
    no_template = refusal(lambda: admission.generation(TENANT, "a1", chat, Sampling(None)))
    assert field_of(no_template) == "messages"
    admitted = admission.generation(TENANT, "a1", Prompts(["w1 w2 w3"], True), Sampling(None))
    assert admitted.prepared.generation is not None
    # as many as fit: the tiny llama's 64 positions less the prompt's 3 tokens
    assert admitted.prepared.generation.max_new_tokens == 64 - 3


def test_a_resident_request_is_admitted_on_the_loop_only_when_in_memory(admission_for) -> None:
    admission, source, _ = admission_for(max_rows=2)
    rows = TextRows(["w1 w2"])
    assert admission.infer_resident(InferCall(TENANT, "a-qv", None, rows, {})) is None
    assert source.reads.get("a-qv", 0) == 0  # and nothing was read to find that out
    loaded = admission.infer(InferCall(TENANT, "a-qv", None, rows, {}))
    resident = admission.infer_resident(InferCall(TENANT, "a-qv", None, rows, {}))
    assert resident is not None and resident.prepared.encodings == loaded.prepared.encodings
    engine = admission.engine
    assert engine.run([resident.prepared]) == engine.run([loaded.prepared])
    too_many = refusal(
        lambda: admission.infer_resident(InferCall(TENANT, "a-qv", None, TextRows(["w1"] * 3), {}))
    )
    assert field_of(too_many) == "inputs"  # the same checks either way
    engine.evict("a-qv")
    assert admission.infer_resident(InferCall(TENANT, "a-qv", None, rows, {})) is None


def test_a_corrupt_artifact_condemns_the_adapter(admission_for) -> None:
    admission, source, directory = admission_for()
    source.corrupt("a-qv")
    error = refusal(lambda: admission.infer(InferCall(TENANT, "a-qv", None, TextRows(["w1"]), {})))
    assert isinstance(error, RequestError) and error.code == "adapter_corrupt"
    assert directory.condemned == ["a-qv"]
